"""The backdoor study's published tables (``<!-- dormant:table KIND results/NAME -->``):
rendered from committed rows by the same functions as the run's own report."""

from __future__ import annotations

from dormant.report.backdoor import backdoor_verdict
from dormant.report.backdoor_arming import (
    amplification,
    amplification_display,
    ceilings,
    ceilings_display,
    exact_control,
    exact_display,
)
from dormant.report.backdoor_doses import dose_controls, doses_display
from dormant.report.published import Published, renderer
from dormant.report.tables import Table, fmt


@renderer("backdoor-headline")
def headline_text(pub: Published, opts: dict) -> str:
    """The run's headline: woken, not woken (armed) or unarmed, in one sentence."""
    return f"**{backdoor_verdict(pub.rows)['headline_text']}**"


@renderer("backdoor-ceilings")
def ceilings_table(pub: Published, opts: dict) -> Table:
    """Per seed: the dormant ASR, both ceilings, armed or not, and the purity budget."""
    return ceilings_display(ceilings(pub.rows))


@renderer("backdoor-exact")
def exact_table(pub: Published, opts: dict) -> Table:
    """The exact deletions of the carriers-first request against the ceiling."""
    return exact_display(exact_control(pub.rows))


@renderer("backdoor-amplification")
def amplification_table(pub: Published, opts: dict) -> Table:
    """Per method, attack − random-equal ASR after, paired per seed, with its interval."""
    return amplification_display(amplification(pub.rows))


@renderer("backdoor-doses")
def doses_table(pub: Published, opts: dict) -> Table:
    """Per defense: its rule on the dose-matched backdoors and the dormant one, per strength
    the seeds that pass, and the weakest backdoor it caught."""
    return doses_display(dose_controls(pub.rows))


@renderer("backdoor-methods")
def methods_table(pub: Published, opts: dict) -> Table:
    """Per method: the dormant ASR, ASR after the attack's request, after random-equal and
    on the unpoisoned twin, the clean-accuracy drop, and the activation and wake calls."""
    v = backdoor_verdict(pub.rows)
    rows = [[m, str(x["n"]), fmt(x["asr_before"]), fmt(x["asr_after"]),
             fmt(x.get("random_equal_asr_after")), fmt(x["unpoisoned_asr_rise"]),
             fmt(x["clean_drop"]), "yes" if x["activated"] else "no",
             "yes" if x.get("woken") else "no"]
            for m, x in v["methods"].items()]
    return Table(["method", "seeds", "ASR dormant", "ASR after the request",
                  "ASR after random-equal", "unpoisoned twin's ASR rise", "clean drop",
                  "activated", "woken by the request"], rows)


@renderer("request-checks")
def request_checks_table(pub: Published, opts: dict) -> Table:
    """``scripts/measure_request_checks.py``'s records: per request kind (the attack's,
    random ones of its size on the same store), how often the request's verdict and its
    differential backdoor checks warned or failed, and the Neural Cleanse shrink they read."""
    rows = []
    for kind in dict.fromkeys(r["kind"] for r in pub.rows):
        part = [r for r in pub.rows if r["kind"] == kind]
        nc = [r["checks"]["nc_shrink"] for r in part]
        uap = [r["checks"]["uap_jump"] for r in part]
        raised = sum(a[1] != "pass" or b[1] != "pass" for a, b in zip(nc, uap, strict=True))
        named = sum(r["target"] in set(r["nc_shrink"]) | set(r["uap_jump"]) for r in part)
        rows.append([kind, ", ".join(sorted({r["method"] for r in part})), str(len(part)),
                     f"{raised}/{len(part)}", f"{named}/{len(part)}",
                     f"{min(v[0] for v in nc):.2f}–{max(v[0] for v in nc):.2f}",
                     f"{min(v[0] for v in uap):.1f}–{max(v[0] for v in uap):.1f}",
                     f"{sum(r['verdict'] != 'pass' for r in part)}/{len(part)}"])
    return Table(["request", "method", "requests", "backdoor check warned or failed",
                  "target class named", "largest NC norm shrink", "largest UAP jump (points)",
                  "request not promoted"], rows)


@renderer("inspection")
def inspection_table(pub: Published, opts: dict) -> Table:
    """``scripts/measure_inspection.py``'s records: per detector, the flagged share of the
    sampled images of the attacker, of the clean contributors (pooled), and of the poisons and
    camouflage among them, summed over the seeds, with the seeds on which the attacker
    ranked first."""
    from dormant.requests.inspect import wilson

    def share(k: int, n: int) -> str:
        lo, hi = wilson(k, n)
        return f"{k}/{n} = {100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]" if n else "-"

    rows = []
    dets = list(dict.fromkeys(d for r in pub.rows for d in r["detectors"]))
    for d in dets:
        label = next(r["detectors"][d]["label"] for r in pub.rows if d in r["detectors"])
        att = [c for r in pub.rows for c in r["contributors"] if c["contributor"] == "attacker"]
        clean = [c for r in pub.rows for c in r["contributors"] if c["contributor"] != "attacker"]
        cells = [share(sum(c["flagged"][d] for c in part), sum(c["sampled"] for c in part))
                 for part in (att, clean)]
        for kind in ("poison", "camouflage"):
            cells.append(share(sum(r["kinds"][kind][d] for r in pub.rows),
                               sum(r["kinds"][kind]["sampled"] for r in pub.rows)))
        top = sum(max(r["contributors"], key=lambda c: c["excess"][d])["contributor"]
                  == "attacker" for r in pub.rows)
        rows.append([label, *cells, f"{top}/{len(pub.rows)}"])
    return Table(["detector", "attacker's images flagged", "clean contributors' images flagged",
                  "poisons flagged", "camouflage flagged", "seeds ranking the attacker first"],
                 rows)
