"""The backdoor study's report: results.csv, report.md, asr.png, asr_cost.png,
nc_triggers.png, cd_masks.png and one self-contained report.html, from the rows of
results.jsonl and the defense artefacts (safetensors) the study saved beside them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.torch import load_file

from dormant.defenses.registry import available_defenses, get_defense, span
from dormant.report.backdoor_arming import (
    amplification,
    amplification_display,
    arm_label,
    armed,
    ceilings,
    ceilings_display,
    exact_control,
    exact_display,
    headline,
)
from dormant.report.backdoor_attack import (
    cost_figure,
    design_display,
    mechanism_display,
    retrain_display,
)
from dormant.report.backdoor_doses import dose_controls, doses_display, doses_sentence
from dormant.report.figures import _placeholder, _save, plt
from dormant.report.html import Block, to_html, to_markdown
from dormant.report.tables import Table, fmt, normalize_row, ok_rows, plus_minus, write_csv
from dormant.store.files import atomic_write_text

CONDITIONS = ("attack", "random-equal", "random-clean", "unpoisoned", "carriers-first", "none",
              "badnets", "blended")
# done-when thresholds: an activated backdoor fires on most triggered inputs after the clean
# deletion, far above its dormant rate, and the deletion leaves the model useful
ASR_ACTIVE = 60.0
ASR_RISE = 40.0
CLEAN_DROP_MAX = 5.0
# ... and the request, not unlearning as such, is the cause: the attack beats a random clean
# request run with exactly its steps (random-equal) by this much, paired over seeds, and the
# same request barely moves a model trained without the poisons
BEATS_CONTROL = 20.0
UNPOISONED_RISE_MAX = 5.0
# positive controls (issue 11): each defense must catch the BadNets baseline the same run
# trains and scans before its result on the clean-unlearning attack counts as evidence; each
# registered defense brings its own rule, thresholds and table columns
# (dormant.defenses.registry)
NOT_EVIDENCE = "not evidence"
ATTACK_CONDITIONS = ("attack", "random-equal", "random-clean", "unpoisoned", "none",
                     "carriers-first")

BASE_METRICS = {
    "clean_acc_before": "clean before",
    "clean_acc_after": "clean after",
    "asr_before": "ASR before",
    "asr_after": "ASR after",
    "asr_delta": "ΔASR",
    "forget_acc_before": "forget before",
    "forget_acc_after": "forget after",
}


def _defenses() -> list:
    return [get_defense(n) for n in available_defenses()]


def metrics() -> dict[str, str]:
    """The conditions table's columns: the base metrics, then each defense's, in the order
    NC, CD, I-BAU of the report (the registry's order reversed: mitigations last)."""
    out = dict(BASE_METRICS)
    for info in reversed(_defenses()):
        out.update(info.report)
    return out


def flags() -> tuple[str, ...]:
    return tuple(f for info in _defenses() for f in info.flags)


def numeric() -> list[str]:
    fl = flags()
    return [m for m in metrics() if m not in fl and m != "asr_delta"] + ["matched_drop"]


PAIRED = {"diff": "ASR after: attack − random", "clean_diff": "clean drop: attack − random",
          "attack_drop": "attack forget drop", "random_drop": "random forget drop",
          "matched_drop": "random matched to"}
MAX_CLASSES = 20
CD_SHOWN = 4


def _flag(v) -> float:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return math.nan
    return float(bool(v))


def _mean(values) -> float | None:
    s = pd.Series(values, dtype=float).dropna()
    return float(s.mean()) if len(s) else None


OWN = ("asr_before_own", "clean_acc_before_own")
"""A method's own model before deletion, where it trains one (SISA's ensemble)."""


def frame(rows: list[dict]) -> pd.DataFrame:
    """The rows as numbers: metrics numeric (absent or null = NaN), NC flags 1/0/NaN, plus the
    per-row ``asr_start`` and ``clean_start`` (the method's own before where it has one,
    else the victim's), ``asr_delta`` and ``clean_drop`` from them, and the forget-set drop
    ``forget_drop`` (before − after)."""
    df = pd.DataFrame(rows)
    for col in ("method", "condition", "seed"):
        if col not in df:
            df[col] = pd.Series(dtype=object)
    for col in numeric():
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df else math.nan
    for col in flags():
        df[col] = df[col].map(_flag).astype(float) if col in df else math.nan
    for col in OWN:
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df else math.nan
    # a method that trains its own model (SISA) is measured against that model's before
    df["asr_start"] = df["asr_before_own"].fillna(df["asr_before"])
    df["asr_delta"] = df["asr_after"] - df["asr_start"]
    df["forget_drop"] = df["forget_acc_before"] - df["forget_acc_after"]
    df["clean_start"] = df["clean_acc_before_own"].fillna(df["clean_acc_before"])
    df["clean_drop"] = df["clean_start"] - df["clean_acc_after"]
    return df


def method_order(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in rows))


def cell_order(rows: list[dict]) -> list[tuple[str, str]]:
    """(method, condition) pairs: conditions in :data:`CONDITIONS` order (unknown ones last),
    methods in the order the study first ran them."""
    methods = method_order(rows)
    pairs = dict.fromkeys((r["method"], r["condition"]) for r in rows)
    rank = {c: i for i, c in enumerate(CONDITIONS)}
    return sorted(pairs, key=lambda p: (rank.get(p[1], len(rank)), p[1], methods.index(p[0])))


def backdoor_table(rows: list[dict]) -> pd.DataFrame:
    """One line per (method, condition) from the ok rows: ``<metric>`` is the mean over seeds,
    ``<metric>_std`` the sample std; an NC flag column holds ``_hits`` (seeds whose target
    class was flagged) of ``_n`` (seeds scanned). A pair whose every cell failed keeps its
    line with ``n`` = 0. A method that trains a model of its own (SISA) shows that model's
    before. The dose-matched controls have their own table
    (``dormant.report.backdoor_doses``)."""
    rows = [r for r in map(normalize_row, rows) if r.get("condition") != "dose"]
    order = cell_order(rows)
    fl = flags()
    values = [m for m in metrics() if m not in fl]
    columns = (["method", "condition", "n"] + [c for m in values for c in (m, f"{m}_std")]
               + [c for f in fl for c in (f"{f}_hits", f"{f}_n")])
    if not order:
        return pd.DataFrame(columns=columns)
    df = frame(ok_rows(rows))
    # a method with a model of its own (SISA) starts from it: before + ΔASR = after
    df["asr_before"] = df["asr_start"]
    df["clean_acc_before"] = df["clean_start"]
    g = df.groupby(["method", "condition"], sort=False)
    index = pd.MultiIndex.from_tuples(order, names=["method", "condition"])
    out = pd.concat([g[values].mean(), g[values].std().add_suffix("_std")], axis=1)
    out = out.reindex(index)
    out["n"] = g["seed"].nunique().reindex(index).fillna(0).astype(int)
    for f in fl:
        out[f"{f}_hits"] = g[f].sum().reindex(index).fillna(0).astype(int)
        out[f"{f}_n"] = g[f].count().reindex(index).fillna(0).astype(int)
    return out.reset_index()[columns]


def _hidden(controls: dict | None) -> set[str]:
    """The defense columns whose values on the attack's models are not evidence."""
    if controls is None:
        return set()
    return {col for d, x in controls["defenses"].items() if not x["evidence"]
            for col in get_defense(d).report}


def backdoor_display(df: pd.DataFrame, controls: dict | None = None) -> Table:
    """:func:`backdoor_table` for display: mean ± std, NC flags as "hits/scanned". With
    ``controls`` (:func:`positive_controls`), a defense that failed its positive control has
    its columns printed as "not evidence" on every model of the attack's conditions."""
    hidden = _hidden(controls)
    shown, fl = metrics(), flags()
    rows = []
    for r in df.to_dict("records"):
        cells = [str(r["method"]), str(r["condition"])]
        for m in shown:
            if m in hidden and r["condition"] in ATTACK_CONDITIONS:
                cells.append(NOT_EVIDENCE)
            elif m in fl:
                cells.append(f"{r[f'{m}_hits']}/{r[f'{m}_n']}" if r[f"{m}_n"] else "-")
            else:
                cells.append(plus_minus(r[m], r[f"{m}_std"], m))
        rows.append([*cells, str(r["n"])])
    return Table(["method", "condition", *shown.values(), "seeds"], rows)


def paired_table(rows: list[dict]) -> pd.DataFrame:
    """Per method and random control (``random-equal``: the attack's exact steps;
    ``random-clean``: strength-matched), over the seeds where both the attack and that
    control have an ASR: ``diff`` = asr_after(attack) − asr_after(control) and
    ``clean_diff`` the same for the clean-accuracy drop, mean and std; the two requests'
    forget-set drops (before − after) and the drop a matched control was matched to."""
    df = frame(ok_rows(rows))
    columns = ["method", "control", "n"] + [c for k in PAIRED for c in (k, f"{k}_std")]
    lines = []
    keys = ["asr_after", "clean_drop", "forget_drop", "matched_drop"]
    for m in method_order(ok_rows(rows)):
        for control in ("random-equal", "random-clean"):
            per = {}
            for cond in ("attack", control):
                part = df[(df["method"] == m) & (df["condition"] == cond)]
                per[cond] = part.groupby("seed")[keys].mean().dropna(subset=["asr_after"])
            seeds = per["attack"].index.intersection(per[control].index)
            if not len(seeds):
                continue
            a, r = per["attack"].loc[seeds], per[control].loc[seeds]
            series = {"diff": a["asr_after"] - r["asr_after"],
                      "clean_diff": a["clean_drop"] - r["clean_drop"],
                      "attack_drop": a["forget_drop"], "random_drop": r["forget_drop"],
                      "matched_drop": r["matched_drop"]}
            line = {"method": m, "control": control, "n": len(seeds)}
            for k, ser in series.items():
                line[k], line[f"{k}_std"] = ser.mean(), ser.std()
            lines.append(line)
    return pd.DataFrame(lines, columns=columns)


def paired_display(df: pd.DataFrame) -> Table:
    rows = [[str(r["method"]), str(r["control"]), str(r["n"]),
             *(plus_minus(r[k], r[f"{k}_std"], k) for k in PAIRED)]
            for r in df.to_dict("records")]
    return Table(["method", "control", "paired seeds", *PAIRED.values()], rows)


def _seed_controls(r: pd.Series) -> dict:
    """One seed's BadNets row as control values: its ASR and clean accuracy, and each
    defense's own values prefixed by its name (``ibau_pass``, ``cd_auroc``, ``nc_flag``; a
    ``pass`` of None where the defense was off)."""
    def num(key):
        v = r.get(key)
        return None if v is None or pd.isna(v) else float(v)

    out = {"asr": num("asr_before"), "clean_acc": num("clean_acc_before")}
    for info in _defenses():
        if info.control is not None:
            out.update({f"{info.name}_{k}": v for k, v in info.control.seed(num).items()})
    return out


def positive_controls(rows: list[dict]) -> dict:
    """Each defense on the BadNets baseline (condition ``badnets``) of the same run.

    ``seeds`` maps each seed with an ok BadNets row to its control values (see
    :func:`_seed_controls`). Per defense with a control: ``status`` "pass", "fail" or "not
    run" (no BadNets row, or the defense was off), ``evidence`` (True only on "pass") and
    ``reached`` (what it reached, in words). Each defense's control judges the seeds' passes:
    I-BAU and CD strictly, every seed, since a mean can hide a seed where the defense missed;
    NC on at least two thirds of the seeds scanned (2 of 3)."""
    df = frame(ok_rows(rows))
    bad = df[df["condition"] == "badnets"].drop_duplicates("seed").sort_values("seed")
    seeds = {int(r["seed"]): _seed_controls(r) for _, r in bad.iterrows()}
    out, thresholds = {}, {}
    for info in _defenses():
        c, d = info.control, info.name
        if c is None:
            continue
        thresholds.update(c.thresholds)
        ran = [{k.removeprefix(f"{d}_"): v for k, v in s.items() if k.startswith(f"{d}_")}
               for s in seeds.values()]
        ran = [v for v in ran if v.get("pass") is not None]
        ok = c.judge([bool(v["pass"]) for v in ran]) if ran else None
        status = "not run" if ok is None else "pass" if ok else "fail"
        out[d] = {"name": info.label, "status": status, "evidence": status == "pass",
                  "rule": c.rule, "reached": c.reached(ran) if ran else "no BadNets scan",
                  "seeds": len(ran)}
    return {"seeds": seeds, "defenses": out, "thresholds": thresholds}


_range = span


def controls_display(c: dict) -> Table:
    """One line per defense: its rule, what it did on each seed's BadNets model, and the
    result; a defense that fails or was not run is marked "not evidence"."""
    seeds = sorted(c["seeds"])
    rows = []
    for d, x in c["defenses"].items():
        cells = [c["seeds"][s].get(f"{d}_shown", "-") for s in seeds]
        result = {"pass": "pass", "fail": f"FAIL: its attack results are {NOT_EVIDENCE}",
                  "not run": f"not run: its attack results are {NOT_EVIDENCE}"}[x["status"]]
        rows.append([x["name"], x["rule"], *cells, result])
    return Table(["defense", "must", *(f"seed {s}" for s in seeds), "positive control"], rows)


def _controls_sentence(c: dict) -> str:
    failing = [x["name"] for x in c["defenses"].values() if not x["evidence"]]
    parts = [f"{x['name']} {x['status']} ({x['reached']})" for x in c["defenses"].values()]
    text = "Positive controls on BadNets: " + "; ".join(parts) + ". "
    if failing:
        text += ("A defense that misses the backdoor it was built for says nothing about the "
                 "woken one: the attack results of " + ", ".join(failing)
                 + f" are {NOT_EVIDENCE}, and \"the defenses miss the woken backdoor\" is not "
                 "shown for " + ("them" if len(failing) > 1 else "it") + ". ")
    else:
        text += "Every defense caught BadNets, so its results on the attack count. "
    return text


def backdoor_verdict(rows: list[dict]) -> dict:
    """The done-when check from the ok rows. ``dormant_asr`` is the poisoned model's mean ASR
    before any deletion (condition none; the attack rows' asr_before when there is no none
    row), ``dormant_flagged`` (hits, scanned) of its NC scans. Per method with attack rows:
    mean ASR after the attack, the rise over ``dormant_asr`` (over the method's own model
    before deletion where it trains one, SISA's ensemble), the mean clean-accuracy drop,
    the random controls' ASR after, the paired attack − random-equal difference and the
    unpoisoned model's ASR rise. ``activated`` when ASR after >= ASR_ACTIVE, rise >=
    ASR_RISE and clean drop <= CLEAN_DROP_MAX; ``woken`` when, on top, the attack beats
    random-equal by BEATS_CONTROL points paired over seeds and the unpoisoned twin rises by
    at most UNPOISONED_RISE_MAX: the request, not unlearning as such, woke the backdoor."""
    ok = ok_rows(rows)
    df = frame(ok)
    none = df[df["condition"] == "none"]
    attack = df[df["condition"] == "attack"]
    dormant = _mean(none["asr_before"] if len(none) else
                    attack[attack["asr_before_own"].isna()]["asr_before"])
    flags = none["nc_flag_before"].dropna()
    paired = paired_table(rows)
    methods = {}
    for m in method_order([r for r in ok if r["condition"] == "attack"]):
        a = attack[attack["method"] == m]
        rc = df[(df["method"] == m) & (df["condition"] == "random-clean")]
        re = df[(df["method"] == m) & (df["condition"] == "random-equal")]
        up = df[(df["method"] == m) & (df["condition"] == "unpoisoned")]
        after, drop = _mean(a["asr_after"]), _mean(a["clean_drop"])
        # per row: a SISA row rises from its own ensemble, the others from the victim
        begins = a["asr_before_own"].fillna(a["asr_before"] if dormant is None else dormant)
        start, rise = _mean(begins), _mean(a["asr_after"] - begins)
        pe = paired[(paired["method"] == m) & (paired["control"] == "random-equal")]
        beats = float(pe["diff"].iloc[0]) if len(pe) else None
        up_rise = _mean(up["asr_delta"])
        activated = (after is not None and rise is not None and drop is not None
                     and after >= ASR_ACTIVE and rise >= ASR_RISE and drop <= CLEAN_DROP_MAX)
        methods[m] = {
            "n": int(a["seed"].nunique()), "asr_before": start, "asr_after": after,
            "asr_rise": rise, "clean_drop": drop,
            "random_clean_asr_after": _mean(rc["asr_after"]),
            "random_equal_asr_after": _mean(re["asr_after"]),
            "beats_random_equal": beats,
            "unpoisoned_asr_rise": up_rise,
            "nc_flagged_after": (int(a["nc_flag_after"].sum()),
                                 int(a["nc_flag_after"].count())),
            "activated": activated,
            "woken": (activated and beats is not None and beats >= BEATS_CONTROL
                      and up_rise is not None and up_rise <= UNPOISONED_RISE_MAX),
        }
    activated = [m for m, v in methods.items() if v["activated"]]
    woken = [m for m, v in methods.items() if v["woken"]]
    controls = positive_controls(rows)
    head, sentence = headline(rows, woken, activated, ASR_RISE)
    return {"headline": head, "headline_text": sentence, "arm": arm_label(rows),
            "armed": armed(rows), "dormant_asr": dormant,
            "dormant_flagged": (int(flags.sum()), len(flags)),
            "methods": methods, "activated": activated, "woken": woken,
            "shown": bool(activated), "controls": controls,
            "evidence": [d for d, x in controls["defenses"].items() if x["evidence"]],
            "not_evidence": [d for d, x in controls["defenses"].items() if not x["evidence"]],
            "thresholds": {"asr_active": ASR_ACTIVE, "asr_rise": ASR_RISE,
                           "clean_drop_max": CLEAN_DROP_MAX, "beats_control": BEATS_CONTROL,
                           "unpoisoned_rise_max": UNPOISONED_RISE_MAX}}


def verdict_text(v: dict) -> str:
    """:func:`backdoor_verdict` as one paragraph (for the report and the CLI): the positive
    controls first, then the attack, with a failing defense's findings marked not evidence."""
    hits, scanned = v["dormant_flagged"]
    nc_note = "" if "nc" in v.get("evidence", ["nc"]) else f" ({NOT_EVIDENCE})"
    text = (v.get("headline_text", "") + " " if v.get("headline_text") else "") + (
        _controls_sentence(v["controls"]) if "controls" in v else "") + (
        f"Poisoned model before any deletion: ASR {fmt(v['dormant_asr'])}%"
        + (f", Neural Cleanse flagged the target in {hits}/{scanned} seeds{nc_note}" if scanned
           else "") + ". ")
    if not v["methods"]:
        return text + "No attack cell succeeded, so there is no verdict."
    parts = [f"{m} {fmt(x['asr_after'])}% (clean drop {fmt(x['clean_drop'])})"
             for m, x in v["methods"].items()]
    names = ", ".join(v["activated"]) or "none"
    woken = ", ".join(v.get("woken", [])) or "none"
    request = ("the camouflage deletion request (not clean)" if v.get("arm", "").startswith(
        "camouflage") else "the clean deletion request")
    return (text + f"ASR after {request}: " + "; ".join(parts) + ". "
            f"Activated (ASR after >= {ASR_ACTIVE:g}%, >= {ASR_RISE:g} points above the "
            f"dormant ASR, clean drop <= {CLEAN_DROP_MAX:g} points): {names}. "
            f"Woken by the request (activated, >= {BEATS_CONTROL:g} points above a random "
            f"clean request run with the same steps, paired over seeds, and the unpoisoned "
            f"twin rising <= {UNPOISONED_RISE_MAX:g}): {woken}. "
            f"Backdoor activation shown: {'yes' if v['shown'] else 'no'}.")


def verdict_display(v: dict) -> Table:
    nc_ok = "nc" in v.get("evidence", ["nc"])
    rows = []
    for m, x in v["methods"].items():
        flagged = x["nc_flagged_after"]
        rows.append([m, str(x["n"]), fmt(x["asr_before"]), fmt(x["asr_after"]),
                     fmt(x["asr_rise"]), fmt(x["clean_drop"]),
                     fmt(x.get("random_equal_asr_after")), fmt(x.get("beats_random_equal")),
                     fmt(x["unpoisoned_asr_rise"]),
                     NOT_EVIDENCE if not nc_ok else
                     f"{flagged[0]}/{flagged[1]}" if flagged[1] else "-",
                     "yes" if x["activated"] else "no", "yes" if x.get("woken") else "no"])
    return Table(["method", "seeds", "ASR dormant", "ASR after attack", "rise", "clean drop",
                  "ASR after random-equal", "attack − random-equal", "unpoisoned ASR rise",
                  "NC flagged after", "activated", "woken by the request"], rows)


# ---- figures --------------------------------------------------------------------------------

def asr_figure(rows: list[dict], path: Path) -> Path:
    """One panel per condition; per method a pair of bars, ASR before and after the deletion
    (mean over seeds, std error bars)."""
    df = backdoor_table(ok_rows(rows))
    if df.empty:
        return _placeholder(path, "no successful cells")
    conds = list(dict.fromkeys(df["condition"]))
    widths = [max(1, int((df["condition"] == c).sum())) for c in conds]
    fig, axes = plt.subplots(1, len(conds), figsize=(1.2 * sum(widths) + 1.5 * len(conds), 3.8),
                             sharey=True, squeeze=False, gridspec_kw={"width_ratios": widths})
    for ax, cond in zip(axes[0], conds, strict=True):
        part = df[df["condition"] == cond]
        x = np.arange(len(part))
        for dx, key, color in ((-0.2, "asr_before", "#9ecae1"), (0.2, "asr_after", "#d62728")):
            ax.bar(x + dx, part[key], 0.4, yerr=part[f"{key}_std"].fillna(0), color=color,
                   capsize=3, label=key.replace("asr_", "ASR "))
        ax.set_xticks(x, list(part["method"]), rotation=40, ha="right", fontsize=8)
        ax.set_title(cond, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("attack success rate (%)")
    axes[0][0].set_ylim(0, 105)
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def _load(root: Path, rel) -> dict | None:
    if not rel or not (Path(root) / rel).is_file():
        return None
    return load_file(str(Path(root) / rel))


def _first_seed_rows(rows: list[dict]) -> list[dict]:
    ok = ok_rows(rows)
    seeds = [r["seed"] for r in ok if r.get("seed") is not None]
    return [r for r in ok if r.get("seed") == min(seeds)] if seeds else []


def _pick(rows: list[dict], root: Path, key: str) -> list[tuple[str, dict, list]]:
    """(label, artefact tensors, NC-flagged classes) of the models the figures compare: the
    poisoned and unpoisoned models before, each method's model after the attack, the
    baselines; only those whose artefact exists and holds ``key``."""
    rows = _first_seed_rows(rows)
    wanted = []
    for cond, label in (("none", "poisoned, before"), ("unpoisoned", "unpoisoned, before")):
        wanted += [(label, r, "before") for r in rows if r["condition"] == cond][:1]
    wanted += [(f"{r['method']}, after attack", r, "after") for r in rows
               if r["condition"] == "attack"]
    wanted += [(f"{cond}, before", r, "before") for cond in ("badnets", "blended")
               for r in rows if r["condition"] == cond][:2]
    out = []
    for label, r, when in wanted:
        tensors = _load(root, r.get(f"artefact_{when}"))
        if tensors is not None and key in tensors:
            out.append((label, tensors, list(r.get(f"nc_flagged_{when}") or [])))
    return out


def nc_sources(rows: list[dict], root: Path) -> list[tuple[str, dict, list]]:
    """The models shown in nc_triggers.png, seed = the smallest: see :func:`_pick`."""
    return _pick(rows, root, "nc_masks")


def cd_sources(rows: list[dict], root: Path) -> list[tuple[str, dict]]:
    """The models shown in cd_masks.png: the poisoned model before and the first method's
    model after the attack (smallest seed), where their artefact holds CD masks."""
    picked = [(label, t) for label, t, _ in _pick(rows, root, "cd_masks_clean")
              if label == "poisoned, before" or label.endswith("after attack")]
    return picked[:2]


def _image(ax, img, vmax: float = 1.0) -> None:
    """Draw a (C,H,W) tensor; C = 1 in grey."""
    a = np.asarray(img, dtype=float) / vmax
    if a.shape[0] == 1:
        ax.imshow(a[0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(np.clip(a.transpose(1, 2, 0), 0, 1))
    ax.set_xticks([])
    ax.set_yticks([])


def nc_figure(rows: list[dict], root: Path, path: Path) -> Path:
    """The reversed triggers (mask × pattern) of each model in :func:`nc_sources`, one column
    per class titled with its mask norm; the target class framed in red and flagged classes
    marked with *."""
    sources = nc_sources(rows, root)
    if not sources:
        return _placeholder(path, "no Neural Cleanse artefacts found")
    target = int(ok_rows(rows)[0].get("target") or 0)
    k = sources[0][1]["nc_masks"].shape[0]
    classes = list(range(min(k, MAX_CLASSES)))
    if target < k and target not in classes:
        classes[-1] = target
    fig, axes = plt.subplots(len(sources), len(classes), squeeze=False,
                             figsize=(1.1 * len(classes) + 1.8, 1.3 * len(sources) + 0.6))
    for i, (label, t, flagged) in enumerate(sources):
        trig = (t["nc_masks"] * t["nc_patterns"]).float().numpy()
        for j, c in enumerate(classes):
            ax = axes[i][j]
            _image(ax, trig[c])
            star = "*" if c in flagged else ""
            ax.set_title(f"{c}{star}: {float(t['nc_norms'][c]):.1f}", fontsize=7,
                         color="red" if c == target else "black")
            for spine in ax.spines.values():
                spine.set_visible(c == target)
                spine.set(color="red", linewidth=2)
        axes[i][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"Neural Cleanse reversed triggers (class: mask L1 norm; target {target} in "
                 "red, * = flagged)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def cd_figure(rows: list[dict], root: Path, path: Path) -> Path:
    """A few clean and poisoned inputs, each above its Cognitive Distillation mask, for the
    models of :func:`cd_sources`."""
    lines = []
    for label, t in cd_sources(rows, root):
        for kind in ("clean", "poisoned"):
            if f"cd_inputs_{kind}" in t and f"cd_masks_{kind}" in t:
                n = min(CD_SHOWN, t[f"cd_inputs_{kind}"].shape[0])
                lines.append((f"{label}\n{kind} input", t[f"cd_inputs_{kind}"][:n], 255.0))
                lines.append(("CD mask", t[f"cd_masks_{kind}"][:n], 1.0))
    if not lines:
        return _placeholder(path, "no Cognitive Distillation artefacts found")
    cols = max(len(imgs) for _, imgs, _ in lines)
    fig, axes = plt.subplots(len(lines), cols, squeeze=False,
                             figsize=(1.2 * cols + 1.8, 1.2 * len(lines) + 0.4))
    for i, (label, imgs, vmax) in enumerate(lines):
        for j in range(cols):
            if j < len(imgs):
                _image(axes[i][j], imgs[j].float().numpy(), vmax)
            else:
                axes[i][j].axis("off")
        axes[i][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# ---- the report ----------------------------------------------------------------------------

def _describe(rows: list[dict]) -> str:
    ok = ok_rows(rows)
    first = next((r for c in ("attack", "none") for r in ok if r.get("condition") == c), None)
    first = first or (ok[0] if ok else normalize_row(rows[0]))
    seeds = sorted({r["seed"] for r in rows if r.get("seed") is not None})
    amp = first.get("amplitude")
    return (f"Dataset `{first.get('dataset', '?')}`, model `{first.get('model', '?')}`; "
            f"trigger `{first.get('trigger', '?')}` (amplitude "
            f"{'?' if amp is None else f'{amp:g}'}), {first.get('poisons', '?')} poisons, "
            f"target class {first.get('target', '?')}; deletion request: "
            f"`{first.get('strategy', '?')}` strategy, {first.get('forget_size', '?')} images; "
            f"seeds {', '.join(map(str, seeds)) or '?'}. {len(ok)} cells succeeded, "
            f"{len(rows) - len(ok)} failed.")


def _failed(rows: list[dict]) -> Table:
    failed = [r for r in map(normalize_row, rows) if r["status"] != "ok"]
    cols = ["method", "condition", "seed", "error"]
    return Table(cols, [[fmt(r.get(c)) for c in cols] for r in failed])


def _blocks(rows: list[dict], title: str, figs: dict[str, Path]) -> list[Block]:
    verdict = backdoor_verdict(rows)
    controls = verdict["controls"]
    paired = paired_table(rows)
    exact = exact_control(rows)
    blocks = [
        Block("h1", title),
        Block("p", f"**{verdict['headline_text']}**"),
        Block("h2", "Was the backdoor armed?"),
        Block("p", f"Arm: {verdict['arm']}. Per seed, the poisoned model's ASR before any "
                   "deletion (dormant) beside two victims trained without counterweights: "
                   "*poisons only* leaves out every carrier of the trigger the attacker "
                   "contributed (its counterweights or camouflage), *no carrier at all* the "
                   "victim's own natural carriers too. A seed is armed when its poisons-only "
                   "ceiling reaches the study's armed_asr. Purity: among the training images "
                   "that carry the trigger, the share labelled the target, before and after "
                   "a request that deletes every counterweight."),
        Block("table", table=ceilings_display(ceilings(rows))),
    ]
    if not exact.empty:
        blocks += [
            Block("p", "The attack's own positive control: a request that holds every "
                       "carrier it can (`carriers-first`), deleted exactly. Its ASR after is "
                       "retrain's mean over its training seeds."),
            Block("table", table=exact_display(exact))]
    amp = amplification(rows)
    if not amp.empty:
        blocks += [
            Block("h2", "Amplification: attack against a random request, paired"),
            Block("p", "Per method, the ASR after the attack's request minus after a random "
                       "request of the same size from the same pool, unlearned with exactly "
                       "the same steps (`random-equal`), paired per seed, with the 95% "
                       "t-interval of the mean. When the strategy is not `simulate`, the "
                       "random request is drawn from the pool without the attack's images."),
            Block("table", table=amplification_display(amp))]
    blocks += [
        Block("h2", "Positive controls"),
        Block("p", "Before any defense's result on the clean-unlearning attack counts, the "
                   "defense must catch the backdoor it was built for: the BadNets baseline "
                   "(3x3 patch, 10% of the training set) that this run trains and scans beside "
                   "the attack, per seed. I-BAU: ASR and clean accuracy before → after I-BAU. "
                   "A defense that fails, or was not run, has its results on the attack "
                   f"printed as \"{NOT_EVIDENCE}\" below."),
        Block("table", table=controls_display(controls)),
    ]
    doses = dose_controls(rows)
    if doses["defenses"]:
        blocks += [
            Block("p", "Dose-matched: each defense's rule on plain backdoors of the study's "
                       "own trigger, trained at a few poison counts (0: a clean model, the "
                       "negative control), and on the dormant backdoor itself; per strength, "
                       "the seeds that pass of those judged (✓: the strength passes on every "
                       "seed). " + doses_sentence(doses)),
            Block("table", table=doses_display(doses))]
    blocks += [
        Block("p", _describe(rows)),
        Block("p", verdict_text(verdict)),
        Block("h2", "Conditions"),
        Block("p", "Mean ± std over seeds of the ok cells, in %: *clean* is test accuracy, "
                   "*ASR* the attack success rate of the trigger on non-target test images, "
                   "*forget* the accuracy on the deletion request's images, before and after "
                   "unlearning (equal when the condition involves none). *NC flagged*: seeds "
                   "whose target class Neural Cleanse flagged, of those scanned; *NC index*: "
                   "the target class's MAD anomaly index. *CD AUROC*: Cognitive Distillation "
                   "separating poisoned from clean inputs. *I-BAU*: ASR and clean accuracy "
                   "after I-BAU repaired the model after unlearning. \"-\": the defense was "
                   "off or the cell failed."),
        Block("table", table=backdoor_display(backdoor_table(rows), controls)),
        Block("h2", "Attack vs random clean request"),
        Block("p", "Per seed, ASR after the attacker's clean request minus ASR after a random "
                   "clean request from the same contribution: `random-equal` runs exactly the "
                   "attack's steps and hyper-parameters, `random-clean` is matched to the "
                   "attack's forget-accuracy drop; mean ± std over the seeds that have both. "
                   "Forget drops: forget accuracy before − after, in points."),
    ]
    if paired.empty:
        blocks.append(Block("p", "No seed has both an attack and a random-control cell."))
    else:
        blocks.append(Block("table", table=paired_display(paired)))
    blocks.append(Block("img", "ASR against clean-accuracy cost, attack against random "
                               "request with the same steps", path=figs["cost"]))
    design = design_display(rows)
    if design.rows:
        blocks += [
            Block("h2", "How the requests were designed"),
            Block("p", "`simulate`: on the attacker's surrogate, each candidate request was "
                       "unlearned by the named method itself and the surrogate's ASR and "
                       "clean accuracy measured on the attacker's held-out public images; "
                       "the largest ASR rise at a clean cost of at most 5 points won (when "
                       "none cost so little, the cheapest). The surrogate's figures are "
                       "measured on the "
                       "images the choice was made on, so they are optimistic. The "
                       "Spearman column measures the first-order proxy against that real "
                       "simulation over the candidates."),
            Block("table", table=design)]
    blocks += [
        Block("h2", "Mechanism: what the request removed and where the weights moved"),
        Block("p", "Natural carriers of the trigger in the request; the L2 length of the "
                   "unlearning's weight move from the model it started on, and its cosine "
                   "with the ASR-raising direction (minus the gradient of the backdoor loss on "
                   "that model; 0: orthogonal, 1: straight at the backdoor)."),
        Block("table", table=mechanism_display(rows))]
    retrain = retrain_display(rows)
    if retrain.rows:
        blocks += [Block("h2", "Retraining noise"),
                   Block("p", "Retrain runs each request under several training seeds; its "
                              "ASR after is their mean."),
                   Block("table", table=retrain)]
    blocks += [
        Block("h2", "Verdict"),
        Block("table", table=verdict_display(verdict)),
        Block("h2", "Figures"),
        Block("img", "attack success rate before and after the deletion, per condition",
              path=figs["asr"]),
        Block("img", "Neural Cleanse reversed triggers (smallest seed)",
              path=figs["nc_triggers"]),
        Block("img", "Cognitive Distillation masks of clean and poisoned inputs (smallest seed)",
              path=figs["cd_masks"]),
    ]
    failed = _failed(rows)
    if failed.rows:
        blocks += [Block("h2", "Failed cells"), Block("table", table=failed)]
    return blocks


def write_backdoor_report(rows: list[dict], out: Path,
                          title: str = "Clean-unlearning backdoor study") -> dict:
    """``results.csv``, ``report.md``, ``asr.png``, ``asr_cost.png``, ``nc_triggers.png``,
    ``cd_masks.png`` and the self-contained ``report.html`` in ``out`` (the study directory:
    artefact paths in the rows are relative to it); returns their paths by kind (csv, md,
    html, asr, cost, nc_triggers, cd_masks). Missing artefacts give placeholder figures."""
    if not rows:
        raise ValueError("no results rows to report")
    out = Path(out)
    paths: dict[str, Path] = {"csv": out / "results.csv", "md": out / "report.md",
                              "html": out / "report.html"}
    write_csv(rows, paths["csv"])
    figs = {"asr": asr_figure(rows, out / "asr.png"),
            "cost": cost_figure(rows, out / "asr_cost.png"),
            "nc_triggers": nc_figure(rows, out, out / "nc_triggers.png"),
            "cd_masks": cd_figure(rows, out, out / "cd_masks.png")}
    blocks = _blocks(rows, title, figs)
    atomic_write_text(paths["md"], to_markdown(blocks))
    atomic_write_text(paths["html"], to_html(blocks, title))
    return {**paths, **figs}
