"""The backdoor report on synthetic rows and tiny synthetic artefacts: its tables hold the
hand-computed means and paired differences, the verdict applies the done-when thresholds,
report.html embeds every figure, and missing artefacts give placeholders."""

from __future__ import annotations

import base64
import math
import re
import statistics

import matplotlib.image
import pytest
import torch
from safetensors.torch import save_file

from dormant.report.backdoor import (
    backdoor_display,
    backdoor_table,
    backdoor_verdict,
    cd_sources,
    nc_sources,
    paired_table,
    write_backdoor_report,
)
from dormant.report.figures import _placeholder

# (method, condition) -> per seed: asr_after, forget_acc_after, nc_flag_before, nc_flag_after
CELLS = {
    ("none", "none"): {0: (5, 100, False, False), 1: (7, 100, True, True)},
    ("bad_teacher", "attack"): {0: (80, 40, False, True), 1: (90, 50, True, None)},
    ("fisher_forgetting", "attack"): {0: (50, 60, False, False), 1: (56, 60, False, False),
                                      2: (70, 60, False, False)},
    ("retrain", "attack"): {0: (95, 30, False, True), 1: (95, 30, False, True)},
    # seed 2 has no ok attack cell: it must stay out of the paired difference
    ("bad_teacher", "random-clean"): {0: (20, 45, False, False), 1: (26, 52, False, False),
                                      2: (999, 0, False, False)},
    ("fisher_forgetting", "random-clean"): {1: (40, 70, False, False)},
    ("bad_teacher", "unpoisoned"): {0: (3, 50, False, False), 1: (4, 50, False, False)},
    ("none", "badnets"): {0: (99, 100, True, True), 1: (98, 100, True, True)},
}
FIRST_SEEN = ["none", "bad_teacher", "fisher_forgetting", "retrain"]


def make_row(method: str, condition: str, seed: int, **over) -> dict:
    asr_after, forget_after, flag_before, flag_after = CELLS[(method, condition)][seed]
    unlearns = method != "none"
    asr_before = {"unpoisoned": 1.0}.get(condition, 5.0 + 2 * seed)
    row = {
        "dataset": "mnist", "model": "cnn-small", "method": method, "condition": condition,
        "seed": seed, "trigger": "noise", "amplitude": 0.1, "poisons": 3, "target": 0,
        "strategy": "margin", "forget_size": 300, "status": "ok",
        "clean_acc_before": 98.0 - seed,
        # retrain's deletion costs 10 points of clean accuracy
        "clean_acc_after": 98.0 - seed - (10.0 if method == "retrain" else 1.0 * unlearns),
        "asr_before": asr_before if unlearns else float(asr_after),
        "asr_after": float(asr_after),
        "forget_acc_before": 100.0, "forget_acc_after": float(forget_after),
        "nc_index_before": 1.0, "nc_index_after": 2.5 + 0.6 * seed,
        "nc_flag_before": flag_before, "nc_flag_after": flag_after,
        "nc_flagged_before": [0] if flag_before else [], "nc_flagged_after": [0, 2]
        if flag_after else [2],
        "cd_auroc_before": 0.6, "cd_auroc_after": 0.8 + 0.1 * seed,
        "ibau_asr": None, "ibau_clean_acc": None,
        "matched_drop": 60.0 - 10 * seed if condition == "random-clean" else None,
        "seconds": 1.0, "artefact_before": None, "artefact_after": None,
    }
    row.update(over)
    return row


def failed(method: str, condition: str, seed: int, error: str, **extra) -> dict:
    return {"dataset": "mnist", "model": "cnn-small", "method": method,
            "condition": condition, "seed": seed, "status": "failed", "error": error, **extra}


@pytest.fixture
def rows() -> list[dict]:
    out = [make_row(m, c, s) for (m, c), seeds in CELLS.items() for s in seeds]
    # a failed cell carrying a stray number that must not reach any mean, and a method that
    # failed everywhere
    out.append(failed("bad_teacher", "attack", 2, "Diverged: loss became nan", asr_after=999))
    out.append(failed("boundary_shrink", "attack", 0, "CUDA out of memory"))
    return out


def _line(df, method, condition) -> dict:
    return df[(df["method"] == method) & (df["condition"] == condition)].iloc[0].to_dict()


def test_main_table_is_the_hand_computed_mean_and_std(rows):
    df = backdoor_table(rows)
    assert list(zip(df["method"], df["condition"], strict=True)) == [
        ("bad_teacher", "attack"), ("fisher_forgetting", "attack"), ("retrain", "attack"),
        ("boundary_shrink", "attack"), ("bad_teacher", "random-clean"),
        ("fisher_forgetting", "random-clean"), ("bad_teacher", "unpoisoned"),
        ("none", "none"), ("none", "badnets")]
    bt = _line(df, "bad_teacher", "attack")
    assert bt["n"] == 2  # the failed seed 2 is not counted
    assert bt["asr_after"] == pytest.approx(statistics.mean([80, 90]))
    assert bt["asr_after_std"] == pytest.approx(statistics.stdev([80, 90]))
    assert bt["asr_delta"] == pytest.approx(statistics.mean([80 - 5, 90 - 7]))
    assert bt["asr_delta_std"] == pytest.approx(statistics.stdev([75, 83]))
    assert bt["clean_acc_before"] == pytest.approx(97.5)
    assert bt["clean_acc_after"] == pytest.approx(96.5)
    assert bt["forget_acc_after"] == pytest.approx(45.0)
    assert bt["nc_index_after"] == pytest.approx(2.8)
    assert bt["cd_auroc_after_std"] == pytest.approx(statistics.stdev([0.8, 0.9]))
    assert (bt["nc_flag_before_hits"], bt["nc_flag_before_n"]) == (1, 2)
    assert (bt["nc_flag_after_hits"], bt["nc_flag_after_n"]) == (1, 1)  # None = not scanned
    assert math.isnan(bt["ibau_asr"])
    assert _line(df, "fisher_forgetting", "attack")["asr_after"] == pytest.approx(176 / 3)
    shrink = _line(df, "boundary_shrink", "attack")
    assert shrink["n"] == 0 and math.isnan(shrink["asr_after"])

    table = backdoor_display(df)
    line = dict(zip(table.headers, table.rows[0], strict=True))
    assert line["ASR after"] == "85.0 ± 7.1" and line["ΔASR"] == "79.0 ± 5.7"
    assert line["NC flagged before"] == "1/2" and line["NC flagged after"] == "1/1"
    assert line["NC index after"] == "2.80 ± 0.42"
    assert line["CD AUROC after"] == "0.850 ± 0.071"
    assert line["I-BAU ASR"] == "-" and line["seeds"] == "2"


def test_paired_difference_uses_only_seeds_in_both(rows):
    df = paired_table(rows).set_index("method")
    assert list(df.index) == ["bad_teacher", "fisher_forgetting"]  # retrain has no random
    bt = df.loc["bad_teacher"]
    assert bt["n"] == 2
    assert bt["diff"] == pytest.approx(statistics.mean([80 - 20, 90 - 26]))
    assert bt["diff_std"] == pytest.approx(statistics.stdev([60, 64]))
    assert bt["attack_drop"] == pytest.approx(statistics.mean([100 - 40, 100 - 50]))
    assert bt["random_drop"] == pytest.approx(statistics.mean([100 - 45, 100 - 52]))
    assert bt["matched_drop"] == pytest.approx(55.0)
    ff = df.loc["fisher_forgetting"]
    assert ff["n"] == 1 and ff["diff"] == pytest.approx(56 - 40) and math.isnan(ff["diff_std"])


def test_verdict_applies_the_thresholds_per_method(rows):
    v = backdoor_verdict(rows)
    assert v["dormant_asr"] == pytest.approx(6.0)
    assert v["dormant_flagged"] == (1, 2)
    m = v["methods"]
    assert list(m) == ["bad_teacher", "fisher_forgetting", "retrain"]
    assert m["bad_teacher"]["asr_after"] == pytest.approx(85.0)
    assert m["bad_teacher"]["asr_rise"] == pytest.approx(79.0)
    assert m["bad_teacher"]["clean_drop"] == pytest.approx(1.0)
    assert m["bad_teacher"]["random_clean_asr_after"] == pytest.approx((20 + 26 + 999) / 3)
    assert m["bad_teacher"]["unpoisoned_asr_rise"] == pytest.approx(2.5)
    assert m["bad_teacher"]["activated"] is True
    assert m["fisher_forgetting"]["activated"] is False  # 58.7% < 60%
    assert m["retrain"]["clean_drop"] == pytest.approx(10.0)
    assert m["retrain"]["activated"] is False  # 95% ASR but the model lost 10 points
    assert v["activated"] == ["bad_teacher"] and v["shown"] is True
    # a backdoor already at 50% before the deletion: 85% is only 35 points of rise
    loud = [dict(r, asr_before=50.0, asr_after=50.0) if r.get("condition") == "none" else r
            for r in rows]
    v = backdoor_verdict(loud)
    assert v["methods"]["bad_teacher"]["asr_rise"] == pytest.approx(35.0)
    assert v["activated"] == [] and v["shown"] is False


def _artefact(path, seed: int, k: int = 4, cd: bool = True) -> None:
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(k, 1, 6, 6, generator=g)
    t = {"nc_masks": masks, "nc_patterns": torch.rand(k, 1, 6, 6, generator=g),
         "nc_norms": masks.sum(dim=(1, 2, 3))}
    if cd:
        for kind in ("clean", "poisoned"):
            t[f"cd_inputs_{kind}"] = torch.randint(0, 256, (3, 1, 6, 6), generator=g,
                                                   dtype=torch.uint8)
            t[f"cd_masks_{kind}"] = torch.rand(3, 1, 6, 6, generator=g)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(t, str(path))


def _pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"',
                                                    page)]


def _height(path) -> int:
    return matplotlib.image.imread(path).shape[0]


def test_report_is_self_contained_and_draws_the_artefacts(rows, tmp_path):
    _artefact(tmp_path / "artefacts/none-0-before.safetensors", 0)
    _artefact(tmp_path / "artefacts/bt-0-after.safetensors", 1)
    _artefact(tmp_path / "artefacts/none-1-before.safetensors", 2)  # seed 1: not shown
    for r in rows:
        if (r["method"], r.get("condition"), r["seed"]) == ("none", "none", 0):
            r["artefact_before"] = r["artefact_after"] = "artefacts/none-0-before.safetensors"
        elif (r["method"], r.get("condition"), r["seed"]) == ("none", "none", 1):
            r["artefact_before"] = "artefacts/none-1-before.safetensors"
        elif (r["method"], r.get("condition"), r["seed"]) == ("bad_teacher", "attack", 0):
            r["artefact_after"] = "artefacts/bt-0-after.safetensors"
        elif (r["method"], r.get("condition"), r["seed"]) == ("fisher_forgetting", "attack", 0):
            r["artefact_after"] = "artefacts/missing.safetensors"
    assert [s[0] for s in nc_sources(rows, tmp_path)] == ["poisoned, before",
                                                          "bad_teacher, after attack"]
    assert [s[0] for s in cd_sources(rows, tmp_path)] == ["poisoned, before",
                                                          "bad_teacher, after attack"]
    paths = write_backdoor_report(rows, tmp_path, "Synthetic backdoor study")
    assert set(paths) == {"csv", "md", "html", "asr", "cost", "nc_triggers", "cd_masks"}
    for key, path in paths.items():
        assert path.is_file() and path.stat().st_size > 0, key
    assert [p.name for p in paths.values()] == ["results.csv", "report.md", "report.html",
                                                "asr.png", "asr_cost.png", "nc_triggers.png",
                                                "cd_masks.png"]
    page = paths["html"].read_text()
    assert 'src="http' not in page and "<script" not in page and "<link" not in page
    pngs = _pngs(page)
    assert page.count("data:image/png;base64,") == len(pngs) == 4
    # the cost figure sits with the attack-vs-random table, the others under Figures
    assert pngs == [paths[k].read_bytes() for k in ("cost", "asr", "nc_triggers", "cd_masks")]
    assert "85.0 ± 7.1" in page and "Diverged: loss became nan" in page
    md = paths["md"].read_text()
    assert "Backdoor activation shown: yes" in md and "![" in md
    assert "seeds 0, 1, 2" in md and "`noise` (amplitude 0.1)" in md
    # two rows of triggers and eight rows of CD images are taller than a placeholder
    ref = _placeholder(tmp_path / "ref.png", "no Neural Cleanse artefacts found")
    assert _height(paths["nc_triggers"]) > 1.5 * _height(ref)
    assert _height(paths["cd_masks"]) > 3 * _height(ref)


def test_missing_artefacts_give_placeholders(rows, tmp_path):
    for r in rows:
        r["artefact_before"] = r["artefact_after"] = "artefacts/gone.safetensors"
    assert nc_sources(rows, tmp_path) == [] and cd_sources(rows, tmp_path) == []
    paths = write_backdoor_report(rows, tmp_path)
    nc = _placeholder(tmp_path / "ref_nc.png", "no Neural Cleanse artefacts found")
    cd = _placeholder(tmp_path / "ref_cd.png", "no Cognitive Distillation artefacts found")
    assert paths["nc_triggers"].read_bytes() == nc.read_bytes()
    assert paths["cd_masks"].read_bytes() == cd.read_bytes()
    assert len(_pngs(paths["html"].read_text())) == 4
