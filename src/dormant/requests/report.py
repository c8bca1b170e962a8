"""The per-request report: ``report.html`` (self-contained) and ``report.md`` from one request
record, with ``recovery.png`` (the tamper test's curves, the new model's and the retrain
oracle's) and ``nc_norms.png`` (the differential backdoor check, per class, before vs after).
The tamper test's headline is the excess against the retrain oracle and its verdict word;
recovery (from the model's own start) is a column, not a verdict."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dormant.experiments.verdicts import FORGET_MARGIN, RELEARN_EXCESS
from dormant.metrics import end_mean
from dormant.report.figures import _placeholder, _save, plt
from dormant.report.html import Block, to_html, to_markdown
from dormant.report.tables import Table
from dormant.store.files import atomic_write_text

# (measurement key, label, decimals): accuracies in percent, the MIA AUC in [0, 1]
UTILITY = [("retain_acc", "retain accuracy (%)", 1), ("test_acc", "test accuracy (%)", 1),
           ("forget_acc", "held-out forget accuracy (%)", 1), ("mia_auc", "MIA AUC (SVC)", 3)]
FLAG_CHECKS = {"nc_shrink": "Neural Cleanse norm shrank", "uap_jump": "UAP success jumped"}
VERDICT_WORDS = {"pass": "every check is within the policy's thresholds",
                 "warn": "some checks crossed their warning threshold",
                 "fail": "some checks crossed their failure threshold"}
_FLAG_COLOR = "#d62728"


def _num(v) -> float:
    """A float, NaN for absent values; bools are not numbers here."""
    if v is None or isinstance(v, bool | str):
        return math.nan
    return float(v)


def _f(v, decimals: int = 1, signed: bool = False) -> str:
    x = _num(v)
    if math.isnan(x):
        return "-"
    return f"{x:+.{decimals}f}" if signed else f"{x:.{decimals}f}"


def _g(v) -> str:
    """A check's value or threshold: the scale varies (points, AUCs, ratios), so the decimals
    follow the size."""
    x = _num(v)
    if math.isnan(x):
        return "-"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}" if abs(x) >= 1 else f"{x:.3f}"


def _series(values) -> np.ndarray:
    return np.array([_num(v) for v in values or []], dtype=np.float64)


def _checks(record: dict) -> list[dict]:
    return [c if isinstance(c, dict) else c.to_dict() for c in record.get("checks") or []]


def flagged_classes(record: dict) -> dict[str, list[int]]:
    """The classes each backdoor check flagged: ``{"nc_shrink": [...], "uap_jump": [...]}``."""
    out = {name: [] for name in FLAG_CHECKS}
    for c in _checks(record):
        if c.get("name") in out:
            out[c["name"]] += [int(k) for k in c.get("classes") or []]
    return out


def _tamper(m: dict) -> list[dict]:
    """The tamper curves ordered by the number of leaked examples."""
    entries = [t for t in (m.get("tamper") or {}).values() if isinstance(t, dict)]
    return sorted(entries, key=lambda t: _num(t.get("k")))


def _end(t: dict) -> float:
    """A block's ``end``; a record written before it existed gets it from its curve (the
    points after step 0)."""
    if t.get("end") is not None:
        return _num(t["end"])
    acc, steps = _series(t.get("forget_acc")), _series(t.get("steps"))
    if len(steps) == len(acc) and len(acc) and steps[0] == 0:
        acc = acc[1:]
    return end_mean(acc[~np.isnan(acc)]) if len(acc) else math.nan


def _verdict(t: dict) -> str:
    return str(t.get("verdict") or t.get("no_verdict") or "no oracle: no verdict")


# ---- figures --------------------------------------------------------------------------------

def recovery_figure(record: dict, path: Path) -> Path:
    """Held-out forget accuracy along each tamper attack on the new model (solid), the same
    attack on the retrain oracle (dash-dot, where one was attacked apart from the new model),
    test accuracy along it (dotted, where measured); dashed references at the forget accuracy
    before unlearning and the unlearned model's test accuracy. A solid curve ending above its
    dash-dot twin is the excess: knowledge the oracle does not regain."""
    m = record.get("measurements") or {}
    curves = [t for t in _tamper(m) if t.get("steps")]
    if not curves:
        return _placeholder(path, "no tamper test recorded")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    cmap = plt.get_cmap("tab10")
    for i, t in enumerate(curves):
        steps, acc = _series(t["steps"]), _series(t.get("forget_acc"))
        start = _num(t.get("start"))
        # the curve starts where the unlearned model stood, unless step 0 is already there
        if not math.isnan(start) and (len(steps) == 0 or steps[0] > 0):
            steps, acc = np.r_[0.0, steps], np.r_[start, acc]
        k = int(_num(t.get("k"))) if not math.isnan(_num(t.get("k"))) else "?"
        label = f"k = {k}" + (" (retain only)" if k == 0 else " leaked")
        ax.plot(steps, acc, color=cmap(i % 10), lw=1.8, marker="o", ms=3,
                label=f"forget, {label}")
        ref = _series(t.get("oracle_forget_acc"))
        if len(ref) == len(_series(t["steps"])):
            ax.plot(_series(t["steps"]), ref, color=cmap(i % 10), lw=1.3, ls="-.",
                    label=f"forget, retrain oracle, {label}")
        if t.get("test_steps"):
            ax.plot(_series(t["test_steps"]), _series(t.get("test_acc")), color=cmap(i % 10),
                    lw=1.2, ls=":", label=f"test, {label}")
    before = _num((m.get("before") or {}).get("forget_acc"))
    test_after = _num((m.get("after") or {}).get("test_acc"))
    if not math.isnan(before):
        ax.axhline(before, color="grey", ls="--", lw=1.3,
                   label=f"forget before unlearning ({before:.1f})")
    if not math.isnan(test_after):
        ax.axhline(test_after, color="black", ls="--", lw=1.3,
                   label=f"test, unlearned model ({test_after:.1f})")
    ax.set_xscale("symlog", linthresh=1)  # log steps like the AURC, with step 0 kept
    ax.set_xlim(left=0)
    ax.set_xlabel("attack steps")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title("tamper test: relearning attack on the unlearned model and the oracle",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _padded(a: np.ndarray, k: int) -> np.ndarray:
    """``a`` with NaN up to length ``k``: a side without measurements draws no bar."""
    return np.r_[a, np.full(k - len(a), np.nan)]


def _bars(ax, before: np.ndarray, after: np.ndarray, flagged: list[int], ylabel: str) -> None:
    k = max(len(before), len(after))
    x = np.arange(k)
    ax.bar(x - 0.2, _padded(before, k), 0.4, color="#9ecae1", label="before")
    colors = [_FLAG_COLOR if c in flagged else "#3182bd" for c in range(k)]
    ax.bar(x + 0.2, _padded(after, k), 0.4, color=colors, label="after")
    ax.set_xticks(x, [f"{c}*" if c in flagged else str(c) for c in range(k)],
                  fontsize=8 if k <= 20 else 6, rotation=0 if k <= 20 else 90)
    for label in ax.get_xticklabels():
        if label.get_text().endswith("*"):
            label.set_color(_FLAG_COLOR)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def nc_figure(record: dict, path: Path) -> Path:
    """Per class, Neural Cleanse's reversed-trigger norm (top) and the targeted UAP success
    (bottom), before vs after; flagged classes' after-bars in red and marked with *."""
    m = record.get("measurements") or {}
    b, a = m.get("before") or {}, m.get("after") or {}
    norms = _series(b.get("nc_norms")), _series(a.get("nc_norms"))
    uap = _series(b.get("uap_success")), _series(a.get("uap_success"))
    if not any(len(s) for s in (*norms, *uap)):
        return _placeholder(path, "no Neural Cleanse or UAP measurements recorded")
    flags = flagged_classes(record)
    k = max(len(s) for s in (*norms, *uap))
    fig, axes = plt.subplots(2, 1, figsize=(min(24.0, max(7.0, 2.0 + 0.45 * k)), 6.4))
    _bars(axes[0], *norms, flags["nc_shrink"], "NC trigger norm (mask L1)")
    axes[0].set_title("Neural Cleanse per class (red * = norm shrank past the policy)",
                      fontsize=10)
    _bars(axes[1], *uap, flags["uap_jump"], "targeted UAP success (%)")
    axes[1].set_title("targeted universal perturbation (red * = success jumped past the policy)",
                      fontsize=10)
    axes[1].set_ylim(0, 105)
    axes[1].set_xlabel("class")
    fig.tight_layout()
    return _save(fig, path)


# ---- tables ---------------------------------------------------------------------------------

def utility_table(m: dict) -> Table:
    b, a = m.get("before") or {}, m.get("after") or {}
    rows = [[label, _f(b.get(key), d), _f(a.get(key), d),
             _f(_num(a.get(key)) - _num(b.get(key)), d, signed=True)]
            for key, label, d in UTILITY]
    return Table(["measure", "before", "after", "after − before"], rows)


def tamper_table(m: dict) -> Table:
    """Per attack: where the new model started and ended, where the retrain oracle ended under
    the same attack, the excess and the verdict; then the secondary columns (best point,
    recovery from the model's own start, AURC, last test accuracy, steps)."""
    rows = []
    for t in _tamper(m):
        test = _series(t.get("test_acc"))
        rows.append([_f(t.get("k"), 0), _f(t.get("start")), _f(_end(t)),
                     _f(t.get("oracle_start")), _f(t.get("oracle_end")),
                     _f(t.get("excess"), signed=True), _f(t.get("forget_gap"), signed=True),
                     _verdict(t), _f(t.get("best")), _f(t.get("recovery"), signed=True),
                     _f(t.get("aurc"), signed=True), _f(test[-1] if len(test) else None),
                     _f(max(_series(t.get("steps")), default=None), 0)])
    return Table(["k leaked", "forget start", "forget end", "oracle start", "oracle end",
                  "excess (points)", "forget gap (points)", "verdict", "forget best",
                  "recovery from own start", "AURC (points)", "test last", "steps"], rows)


def checks_table(record: dict) -> Table:
    rows = [[str(c.get("name", "?")), str(c.get("group", "")), _g(c.get("value")),
             _g(c.get("warn")), _g(c.get("fail")), str(c.get("status", "-")).upper(),
             ", ".join(map(str, c.get("classes") or [])) or "-", str(c.get("detail") or "")]
            for c in _checks(record)]
    return Table(["check", "group", "value", "warn at", "fail at", "status", "classes",
                  "detail"], rows)


def nc_table(record: dict) -> Table:
    m = record.get("measurements") or {}
    b, a = m.get("before") or {}, m.get("after") or {}
    cols = [_series(b.get("nc_norms")), _series(a.get("nc_norms")),
            _series(b.get("uap_success")), _series(a.get("uap_success"))]
    flags = flagged_classes(record)
    k = max(map(len, cols))
    rows = []
    for c, (nb, na, ub, ua) in enumerate(zip(*(_padded(s, k) for s in cols), strict=True)):
        ratio = na / nb if nb > 0 else math.nan
        names = [n for n, classes in flags.items() if c in classes]
        rows.append([str(c), _f(nb, 2), _f(na, 2), _f(ratio, 2), _f(ub), _f(ua),
                     _f(ua - ub, signed=True), ", ".join(names) or "-"])
    return Table(["class", "NC norm before", "NC norm after", "after / before", "UAP before (%)",
                  "UAP after (%)", "UAP after − before", "flagged by"], rows)


def _pairs(d: dict | None, headers: list[str]) -> Table:
    """Key/value lines; numbers (durations) with one decimal, anything else as text."""
    return Table(headers, [[str(k), _f(v) if isinstance(v, int | float) or v is None else str(v)]
                           for k, v in (d or {}).items()])


# ---- text -----------------------------------------------------------------------------------

def verdict_text(record: dict) -> str:
    """The verdict in words: the worst status and the checks that set it."""
    verdict = str(record.get("verdict") or "-")
    checks = _checks(record)
    text = f"Verdict: *{verdict.upper()}*"
    if verdict in VERDICT_WORDS:
        text += f", {VERDICT_WORDS[verdict]}"
    parts = []
    for status in ("fail", "warn"):
        names = [str(c.get("name")) for c in checks if c.get("status") == status]
        if names:
            parts.append(f"{status}: " + ", ".join(f"`{n}`" for n in names))
    return text + (" (" + "; ".join(parts) + ")." if parts else ".")


def _hparams(hp: dict | None) -> str:
    if not hp:
        return "defaults"
    show = lambda v: f"{v:g}" if isinstance(v, float) else str(v)  # noqa: E731
    return ", ".join(f"`{k}={show(v)}`" for k, v in hp.items())


def _ver(v) -> str:
    return "-" if v is None else f"v{v}"


def title(record: dict) -> str:
    rid = record.get("request_id")
    if record.get("kind") == "audit":
        return "Audit" + (f" {rid}" if rid else "")
    return f"Deletion request {rid or '?'}"


def header_blocks(record: dict) -> list[Block]:
    audit = record.get("kind") == "audit"
    model = record.get("model")
    if audit:
        files = record.get("files") or {}
        what = (f"Audit of `{files.get('unlearned', '?')}` (unlearned) against "
                f"`{files.get('original', '?')}` (original)"
                + (f", model `{model}`." if model else "."))
    else:
        what = (f"Model `{model or '?'}` {_ver(record.get('from_version'))} → "
                f"{_ver(record.get('to_version'))}.")
    method = record.get("method")
    how = (f"Method `{method}` with {_hparams(record.get('hparams'))}." if method
           else "Unlearning method: not recorded (unlearned elsewhere).")
    ids = f"Ids: {record.get('ids', '-')}"
    if record.get("already_deleted_by"):
        from dormant.requests.plan import already_deleted_note

        asked = int(record.get("ids") or 0) + int(record.get("already_deleted") or 0)
        ids += f" ({already_deleted_note(record['already_deleted_by'], asked)})"
    elif record.get("already_deleted"):
        ids += f" ({record['already_deleted']} more asked for were already deleted)"
    who = record.get("contributors")
    if who:
        ids += ("; contributed by " + ", ".join(f"{c} ({n})" for c, n in who.items())
                + " (the model's data manifest)")
    blocks = [
        Block("h1", title(record)),
        Block("p", what),
        Block("p", f"{how} Requester: {record.get('requester') or '-'}. Reason: "
                   f"{record.get('reason') or '-'}. {ids}."),
        Block("p", verdict_text(record)),
    ]
    if not audit:  # an audit promotes nothing: its verdict is the result
        why = record.get("promotion_reason") or ""
        head = "Promoted" if record.get("promoted") else "Not promoted"
        blocks.append(Block("p", f"{head}{': ' + why if why else ''}."))
        blocks += cost_blocks(record)
    return blocks


def cost_blocks(record: dict) -> list[Block]:
    """The request's training cost against a full retrain, its batch and, for SISA, what was
    retrained."""
    out = []
    cost = record.get("cost") or {}
    batch = record.get("batch") or {}
    if batch.get("size", 1) > 1:
        out.append(Block("p", f"Request {batch['index'] + 1} of a batch of {batch['size']}, "
                              "processed with one unlearning run; the costs are its share."))
    if cost.get("training_seconds") is not None:
        full = cost.get("full_retrain_seconds")
        text = f"Training: {cost['training_seconds']:.1f} s"
        if full is not None:
            ratio = f", {full / cost['training_seconds']:.1f}x less" \
                if cost["training_seconds"] > 0 else ""
            text += f" against {full:.1f} s for a full retrain{ratio}"
        out.append(Block("p", text + "."))
    sisa = record.get("sisa")
    if sisa:
        plan = sisa["plan"]
        stages = ", ".join(f"shard {r['shard']} from slice {r['from_slice']}"
                           for r in sisa["retrained"]) or "nothing"
        out.append(Block("p", f"SISA, {plan['shards']} shards of {plan['slices']} slices: "
                              f"retrained {stages}; every other shard checkpoint is the same "
                              f"file as before. Assignment sha256 "
                              f"`{sisa['assignment_sha256'][:16]}`."))
    return out


def _nc_caption(record: dict) -> str:
    flags = flagged_classes(record)
    parts = [f"{name} ({FLAG_CHECKS[name]}): class{'es' if len(cs) > 1 else ''} "
             + ", ".join(map(str, cs)) for name, cs in flags.items() if cs]
    return ("Per-class Neural Cleanse norm and targeted UAP success, before vs after. Flagged: "
            + ("; ".join(parts) if parts else "no class") + ".")


def _recovery_caption(record: dict) -> str:
    m = record.get("measurements") or {}
    parts = []
    for t in _tamper(m):
        k = _f(t.get("k"), 0)
        if t.get("verdict") is None:
            parts.append(f"k = {k}: {_verdict(t)}")
        else:
            parts.append(f"k = {k}: excess against the retrain oracle "
                         f"{_f(t.get('excess'), signed=True)} points, {t['verdict']}")
    return ("Held-out forget accuracy along the relearning attack on the unlearned model "
            "(solid) and on the retrain oracle (dash-dot, when it is not the new model); "
            "dashed: forget accuracy before unlearning and the unlearned model's test accuracy. "
            + ("; ".join(parts) + "." if parts else "No tamper test recorded."))


def _oracle(record: dict) -> str | None:
    m = record.get("measurements") or {}
    return record.get("oracle") or next(
        (t.get("oracle") for t in _tamper(m) if t.get("oracle")), None)


def _tamper_intro(record: dict) -> str:
    oracle = _oracle(record)
    return ("The relearning attack on the new model, compared with the retrain oracle "
            "attacked the same way (same budget, seed and leaked ids). Oracle: "
            + (f"{oracle}. " if oracle else "none, so no verdict. ")
            + "Excess: forget accuracy at the attack's end (the mean of its last 12.8% of "
            "points) minus the oracle's; forget gap: forget accuracy after unlearning minus "
            f"the oracle's. Verdict: one attack seed has no interval, so it is "
            f"does-not-forget or over-forgets when the gap is beyond ±{FORGET_MARGIN:g} "
            "points, else inconclusive (resists only against itself, where the excess is 0 "
            "by definition); the policy's excess levels gate the request (fail from "
            f"{RELEARN_EXCESS:g}). Recovery, the best point minus the model's own start, is "
            "shown but judges nothing: it scores over-forgetting as relearning.")


def limits(record: dict) -> list[list[str]]:
    """Per group of checks, what it can and cannot tell for this request: the held-out ids'
    number against the fewest the statistics need, whether the ids were memorised at all
    (the retrain oracle's forget accuracy and loss against the old model's), and what the
    oracle is. Rows of ``[checks, what they can tell here]``."""
    from dormant.requests.policy import MEMORISED_RISE

    m = record.get("measurements") or {}
    ev, ch = m.get("evidence") or {}, m.get("change") or {}
    k0 = (m.get("tamper") or {}).get("k0") or {}
    n, need = ev.get("heldout"), ev.get("min_heldout")
    before_acc = _num((m.get("before") or {}).get("forget_acc"))
    oracle_acc = _num(k0.get("oracle_start"))
    rows = []
    if n is not None:
        step = 100 / max(int(n), 1)
        size = (f"{n} held-out ids: one id is {step:.1f} points of forget accuracy. "
                + (f"Too few to decide (at least {need}): these checks warn, insufficient "
                   "evidence." if need is not None and n < need else
                   "Enough for a difference of a few points, not for one or two ids."))
    else:
        size = "The number of held-out ids was not recorded."
    memorised = ""
    if not math.isnan(before_acc) and not math.isnan(oracle_acc):
        gap = before_acc - oracle_acc
        memorised = (f" Before unlearning the model scored them {before_acc:.1f}%; the retrain "
                     f"oracle, which never saw them, {oracle_acc:.1f}%"
                     + (f": they are barely memorised ({gap:+.1f} points), so any model scores "
                        "them well and a high forget accuracy does not show they are "
                        "remembered, nor a low forget gap that they are forgotten."
                        if gap < FORGET_MARGIN else
                        f": {gap:+.1f} points of them were memorised, what forgetting must "
                        "remove."))
    rows.append(["forget_gap, mia_auc", size + memorised])
    if ch:
        rise = _num(ch.get("loss_oracle")) - _num(ch.get("loss_before"))
        if ch.get("oracle") == "self":
            text = ("The new model is the retrain oracle: it forgot exactly what retraining "
                    "forgets, which is all that deletion can mean.")
        elif ch.get("oracle") is None:
            text = "No oracle: the change of the model is shown, but nothing says how much is "\
                   "enough."
        else:
            text = (f"Compares the new model's change on the {ch.get('ids')} ids with the "
                    f"retrain oracle's (its forget loss rises {rise:+.4f} nats). "
                    + ("That rise is too small to judge a change against: the ids are barely "
                       "memorised." if not rise > MEMORISED_RISE else
                       "A model that moved little of that did not unlearn the ids."))
        rows.append(["unchanged", text])
    rows.append(["excess, excess_leaked",
                 "The relearning attack against the retrain oracle attacked the same way, on "
                 "the same held-out ids (so the same limit on their number). It cannot tell "
                 "anything where the oracle itself scores the ids as well as the original: "
                 "nothing was there to come back."])
    rows.append(["retain_drop, test_drop",
                 "Utility on the retained training ids and the test set: independent of the "
                 "request's size."])
    rows.append(["nc_shrink, uap_jump",
                 "The differential backdoor check on clean test images, independent of the ids: "
                 "it tells a woken backdoor from a clean update, not whether the ids were "
                 "forgotten."])
    return rows


def _blocks(record: dict, figs: dict[str, Path]) -> list[Block]:
    m = record.get("measurements") or {}
    sha = record.get("sha256") or {}
    files = record.get("files") or {}
    if record.get("kind") == "audit":
        sha = {f"{k} ({files[k]})" if k in files else k: v for k, v in sha.items()}
    return [
        *header_blocks(record),
        Block("h2", "Before and after"),
        Block("p", "Before: the model the request started from; after: the unlearned model. "
                   "Forget accuracy and the MIA AUC are on the request's held-out ids."),
        Block("table", table=utility_table(m)),
        Block("h2", "Checks"),
        Block("table", table=checks_table(record)),
        Block("h2", "What the checks can and cannot tell for this request"),
        Block("table", table=Table(["checks", "for this request"], limits(record))),
        Block("h2", "Tamper test"),
        Block("p", _tamper_intro(record)),
        Block("table", table=tamper_table(m)),
        Block("img", _recovery_caption(record), path=figs["recovery"]),
        Block("h2", "Differential backdoor check"),
        Block("img", _nc_caption(record), path=figs["nc"]),
        Block("table", table=nc_table(record)),
        Block("h2", "Checkpoints (sha256)"),
        Block("table", table=_pairs(sha, ["checkpoint", "sha256"])),
        Block("h2", "Durations"),
        Block("table", table=_pairs(record.get("durations"), ["phase", "seconds"])),
        Block("h2", "Package versions"),
        Block("table", table=_pairs(record.get("versions"), ["package", "version"])),
    ]


def write_request_report(record: dict, out: Path) -> dict[str, Path]:
    """``recovery.png``, ``nc_norms.png``, ``report.html`` (images inline) and ``report.md`` in
    ``out``; returns their paths as html, markdown, recovery and nc."""
    out = Path(out)
    figs = {"recovery": recovery_figure(record, out / "recovery.png"),
            "nc": nc_figure(record, out / "nc_norms.png")}
    blocks = _blocks(record, figs)
    paths = {"html": out / "report.html", "markdown": out / "report.md"}
    atomic_write_text(paths["html"], to_html(blocks, f"dormant: {title(record)}"))
    atomic_write_text(paths["markdown"], to_markdown(blocks))
    return {**paths, **figs}
