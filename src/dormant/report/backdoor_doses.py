"""The defenses' dose-matched positive controls: each defense judged, by its own control rule,
on plain backdoors of the study's own trigger at the strengths the attack's backdoor reaches
(condition ``dose``), and on the dormant backdoor itself (condition ``none``).

BadNets at 10% sits near 100% ASR; the dormant backdoor of the clean-unlearning attack sits
at 6-35%. A defense that catches the first says nothing about the second until it has caught
a backdoor as weak. Per defense the report names the weakest dose it caught: the
lowest dose from which it and every stronger dose pass the defense's control judgement
(``Control.judge``) on every seed of the run, provided the clean model (dose 0) does not.
Rules that depend on the backdoor's strength have a dose form (``Control.dose``: I-BAU's is
relative to the clean model's floor, Cognitive Distillation's reads only the triggered
inputs the backdoor fires on).
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
    """One entry per dose (its poisons, ascending; dose 0 is the clean model) and one for
    the dormant backdoor when the run scanned it: its rows by seed and its mean ASR."""
    ok = ok_rows(rows)
    out = []
    doses = sorted({int(r["dose"]) for r in ok if r.get("condition") == "dose"
                    and r.get("dose") is not None})
    for k in doses:
        by_seed = {r["seed"]: r for r in ok if r.get("condition") == "dose"
                   and r.get("dose") == k}
        out.append({"key": k, "label": f"{k} poisons" if k else "0 poisons (clean)",
                    "rows": by_seed})
    dormant = {r["seed"]: r for r in ok if r.get("condition") == "none"}
    if doses and dormant:
        out.append({"key": DORMANT, "label": "dormant backdoor", "rows": dormant})
    for s in out:
        asr = [r.get("asr_before") for r in s["rows"].values() if r.get("asr_before") is not None]
        s["asr"] = sum(asr) / len(asr) if asr else None
    return out


def _judge(c, rows: dict, seeds: int) -> dict:
    """A strength's status under control ``c``: ``pass`` only when every one of the run's
    ``seeds`` was judged and the control's judgement passes; ``partial`` when it passes on
    fewer seeds than the run has (a failed cell, or I-BAU's seeds too close to the floor)."""
    judged = [c.at_dose(_num(r)) for r in rows.values()]
    ran = [bool(j["pass"]) for j in judged if j.get("pass") is not None]
    if not ran:
        status = "not run"
    elif not c.judge(ran):
        status = "fail"
    else:
        status = "pass" if len(ran) == seeds else "partial"
    return {"status": status, "passes": sum(ran), "seeds": len(ran)}


def dose_controls(rows: list[dict]) -> dict:
    """``strengths``: the doses (and the dormant backdoor) with their mean ASR. Per defense
    with a control: its dose ``rule``, per strength the judgement (:func:`_judge`), and
    ``weakest``: the lowest dose from which it and every stronger dose pass, provided the
    clean model (dose 0, when scanned) does not; None when there is none, with ``why``.
    Empty without dose rows."""
    strengths = _strengths(rows)
    doses = [s for s in strengths if s["key"] != DORMANT]
    if not doses:
        return {"strengths": [], "defenses": {}}
    seeds = len({seed for s in doses for seed in s["rows"]})
    out = {}
    for name in available_defenses():
        info = get_defense(name)
        c = info.control
        if c is None:
            continue
        by = {s["key"]: _judge(c, s["rows"], seeds) for s in strengths}
        weakest, why = None, "caught none of the doses"
        if all(j["status"] == "not run" for j in by.values()):
            why = "not run"
        elif by.get(0, {}).get("status") in ("pass", "partial"):
            why = "fires on the clean model (dose 0), so a catch says nothing"
        else:
            for s in reversed([s for s in doses if s["key"]]):
                if by[s["key"]]["status"] != "pass":
                    break
                weakest = s
        out[name] = {"name": info.label, "rule": c.dose_rule or c.rule, "by": by,
                     "weakest": None if weakest is None else weakest["key"],
                     "weakest_asr": None if weakest is None else weakest["asr"],
                     "why": None if weakest is not None else why}
    return {"strengths": strengths, "defenses": out}


def _head(s: dict) -> str:
    return f"{s['label']} (ASR {fmt(s['asr'])})"


def doses_display(d: dict) -> Table:
    """One line per defense: its rule, per strength the seeds that passed of those judged
    (✓: the strength passes on every seed the run has), and the weakest dose it caught."""
    rows = []
    for x in d["defenses"].values():
        cells = []
        for s in d["strengths"]:
            j = x["by"][s["key"]]
            cells.append("-" if j["status"] == "not run" else
                         f"{j['passes']}/{j['seeds']}" + (" ✓" if j["status"] == "pass" else ""))
        weakest = x["why"] if x["weakest"] is None else next(
            _head(s) for s in d["strengths"] if s["key"] == x["weakest"])
        rows.append([x["name"], x["rule"], *cells, weakest])
    return Table(["defense", "must", *(_head(s) for s in d["strengths"]), "weakest caught"],
                 rows)


def doses_sentence(d: dict) -> str:
    """Per defense in words: the weakest backdoor caught, and whether the dormant one was."""
    parts = []
    for x in d["defenses"].values():
        if x["weakest"] is None:
            parts.append(f"{x['name']}: {x['why']}")
            continue
        text = (f"{x['name']} caught every dose down to {x['weakest']} poisons (mean ASR "
                f"{fmt(x['weakest_asr'])}%)")
        dormant = x["by"].get(DORMANT)
        if dormant and dormant["status"] != "not run":
            text += (", and the dormant backdoor" if dormant["status"] == "pass"
                     else ", not the dormant backdoor")
        parts.append(text)
    return "; ".join(parts) + "." if parts else "No defense ran on the doses."
