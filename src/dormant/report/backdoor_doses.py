"""The defenses' dose-matched positive controls: each defense judged, by its own control rule,
on plain backdoors of the study's own trigger at the strengths the attack's backdoor reaches
(condition ``dose``), and on the dormant backdoor itself (condition ``none``).

BadNets at 10% sits near 100% ASR; the dormant backdoor of the clean-unlearning attack sits
at 6-35%. A defense that catches the first says nothing about the second until it has caught
a backdoor as weak. Per defense the report names the weakest dose it caught: the dose of
lowest mean ASR whose seeds pass the defense's control judgement (``Control.judge``). Rules
that depend on the backdoor's strength have a dose form (``Control.dose``; I-BAU's is
relative to the unpoisoned twin's floor).
"""

from __future__ import annotations

import pandas as pd

from dormant.defenses.registry import available_defenses, get_defense
from dormant.report.tables import Table, fmt, ok_rows

DORMANT = "dormant"
"""The column of the attack's own dormant backdoor (condition ``none``)."""


def _num(r: dict):
    def num(key):
        v = r.get(key)
        if isinstance(v, bool):
            return float(v)
        return None if v is None or pd.isna(v) else float(v)

    return num


def _strengths(rows: list[dict]) -> list[dict]:
    """One entry per dose (its poisons, ascending) and one for the dormant backdoor
    when the run scanned it: its rows by seed and its mean ASR."""
    ok = ok_rows(rows)
    out = []
    doses = sorted({int(r["dose"]) for r in ok if r.get("condition") == "dose"
                    and r.get("dose") is not None})
    for k in doses:
        by_seed = {r["seed"]: r for r in ok if r.get("condition") == "dose"
                   and r.get("dose") == k}
        out.append({"key": k, "label": f"{k} poisons", "poisons": next(
            iter(by_seed.values())).get("poisons"), "rows": by_seed})
    dormant = {r["seed"]: r for r in ok if r.get("condition") == "none"}
    if doses and dormant:
        out.append({"key": DORMANT, "label": "dormant backdoor", "poisons": next(
            iter(dormant.values())).get("poisons"), "rows": dormant})
    for s in out:
        asr = [r.get("asr_before") for r in s["rows"].values() if r.get("asr_before") is not None]
        s["asr"] = sum(asr) / len(asr) if asr else None
        s["asr_seeds"] = asr
    return out


def dose_controls(rows: list[dict]) -> dict:
    """``strengths``: the doses (and the dormant backdoor) with their mean ASR. Per defense
    with a control: its dose ``rule``, per strength the seeds' judgements (``status`` pass,
    fail or not run, ``passes`` of ``seeds``), and ``weakest`` (the caught dose of lowest mean
    ASR, None when it caught none) with ``weakest_asr``. Empty without dose rows."""
    strengths = _strengths(rows)
    if not any(s["key"] != DORMANT for s in strengths):
        return {"strengths": [], "defenses": {}}
    out = {}
    for name in available_defenses():
        info = get_defense(name)
        c = info.control
        if c is None:
            continue
        by = {}
        for s in strengths:
            judged = [c.at_dose(_num(r)) for r in s["rows"].values()]
            ran = [bool(j["pass"]) for j in judged if j.get("pass") is not None]
            ok = c.judge(ran) if ran else None
            by[s["key"]] = {"status": "not run" if ok is None else "pass" if ok else "fail",
                            "passes": sum(ran), "seeds": len(ran)}
        caught = [s for s in strengths if s["key"] != DORMANT and s["asr"] is not None
                  and by[s["key"]]["status"] == "pass"]
        weakest = min(caught, key=lambda s: s["asr"]) if caught else None
        out[name] = {"name": info.label, "rule": c.dose_rule or c.rule, "by": by,
                     "weakest": None if weakest is None else weakest["key"],
                     "weakest_asr": None if weakest is None else weakest["asr"]}
    return {"strengths": strengths, "defenses": out}


def _head(s: dict) -> str:
    return f"{s['label']} (ASR {fmt(s['asr'])})"


def doses_display(d: dict) -> Table:
    """One line per defense: its rule, per strength the seeds that passed (a ✓ where the
    judgement passes), and the weakest dose it caught."""
    rows = []
    for x in d["defenses"].values():
        cells = []
        for s in d["strengths"]:
            j = x["by"][s["key"]]
            cells.append("-" if j["status"] == "not run" else
                         f"{j['passes']}/{j['seeds']}" + (" ✓" if j["status"] == "pass" else ""))
        weakest = "none" if x["weakest"] is None else next(
            _head(s) for s in d["strengths"] if s["key"] == x["weakest"])
        rows.append([x["name"], x["rule"], *cells, weakest])
    return Table(["defense", "must", *(_head(s) for s in d["strengths"]), "weakest caught"],
                 rows)


def doses_sentence(d: dict) -> str:
    """Per defense in words: the weakest backdoor caught, and whether the dormant one was."""
    parts = []
    for x in d["defenses"].values():
        text = (f"{x['name']} caught none of the doses" if x["weakest"] is None else
                f"{x['name']} caught down to {x['weakest']} poisons (mean ASR "
                f"{fmt(x['weakest_asr'])}%)")
        dormant = x["by"].get(DORMANT)
        if dormant and dormant["status"] != "not run":
            text += (", and the dormant backdoor" if dormant["status"] == "pass"
                     else ", not the dormant backdoor")
        parts.append(text)
    return "; ".join(parts) + "." if parts else "No defense ran on the doses."
