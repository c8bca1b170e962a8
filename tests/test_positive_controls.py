"""Positive controls on synthetic rows: each defense is judged on the run's own BadNets
baseline, I-BAU and CD strictly per seed, NC on 2 of 3 seeds; a defense that fails (or was
not run) has its attack results printed as "not evidence" in the tables and the verdict."""

from __future__ import annotations

import pytest

from dormant.report.backdoor import (
    NOT_EVIDENCE,
    backdoor_display,
    backdoor_table,
    backdoor_verdict,
    controls_display,
    positive_controls,
    verdict_display,
    verdict_text,
    write_backdoor_report,
)

# per seed, the BadNets model: (ASR, clean, ASR after I-BAU, clean after I-BAU, CD AUROC,
# NC flagged the target)
BADNETS = {0: (100.0, 97.0, 9.0, 95.5, 0.95, True),
           1: (99.9, 97.3, 5.6, 95.9, 0.85, False),
           2: (100.0, 97.1, 30.0, 96.0, 0.97, True)}


def _row(condition: str, seed: int, method: str = "none", **over) -> dict:
    row = {"dataset": "mnist", "model": "cnn-small", "method": method,
           "condition": condition, "seed": seed, "status": "ok", "target": 0,
           "trigger": "noise", "amplitude": 0.1, "poisons": 27, "strategy": "margin",
           "forget_size": 300, "clean_acc_before": 97.0, "clean_acc_after": 96.0,
           "asr_before": 20.0, "asr_after": 70.0, "forget_acc_before": 100.0,
           "forget_acc_after": 60.0, "nc_flag_before": False, "nc_flag_after": False,
           "nc_index_before": 0.5, "nc_index_after": 1.1, "cd_auroc_before": 0.52,
           "cd_auroc_after": 0.55, "ibau_asr": 65.0, "ibau_clean_acc": 95.0,
           "matched_drop": None, "artefact_before": None, "artefact_after": None}
    row.update(over)
    return row


def _badnets(seed: int, **over) -> dict:
    asr, clean, ibau_asr, ibau_clean, auroc, flag = BADNETS[seed]
    values = {"trigger": "patch", "amplitude": 1.0, "asr_before": asr, "asr_after": asr,
              "clean_acc_before": clean, "clean_acc_after": clean, "ibau_asr": ibau_asr,
              "ibau_clean_acc": ibau_clean, "cd_auroc_before": auroc,
              "cd_auroc_after": auroc, "nc_flag_before": flag, "nc_flag_after": flag,
              "nc_index_before": 2.4 if flag else 1.2}
    return _row("badnets", seed, **{**values, **over})


@pytest.fixture
def rows() -> list[dict]:
    out = []
    for s in BADNETS:
        out += [_row("none", s, asr_after=20.0), _row("attack", s, "bad_teacher"),
                _row("random-clean", s, "bad_teacher", asr_after=40.0), _badnets(s)]
    return out


def test_controls_are_judged_per_seed_on_the_badnets_rows(rows):
    c = positive_controls(rows)
    assert sorted(c["seeds"]) == [0, 1, 2]
    s0 = c["seeds"][0]
    assert s0["ibau_asr_drop"] == pytest.approx(91.0)
    assert s0["ibau_clean_drop"] == pytest.approx(1.5)
    # I-BAU: every seed drops >= 50 points (91, 94.3, 70) at <= 5 clean points
    assert c["defenses"]["ibau"]["status"] == "pass"
    assert c["defenses"]["ibau"]["reached"] == ("ASR drop 70.0 to 94.3 points, clean drop "
                                                "1.1 to 1.5; 3/3 seeds pass")
    # CD: the mean AUROC is 0.923, but seed 1 reaches only 0.85, and the rule is per seed
    assert c["defenses"]["cd"]["status"] == "fail"
    assert not c["defenses"]["cd"]["evidence"]
    assert c["defenses"]["cd"]["reached"] == "AUROC 0.850 to 0.970; 2/3 seeds pass"
    # NC: 2 of 3 seeds flag the target
    assert c["defenses"]["nc"]["status"] == "pass"
    assert c["defenses"]["nc"]["reached"] == "target flagged on 2/3 seeds"


def test_ibau_fails_on_one_seed_with_a_large_clean_drop(rows):
    rows = [_badnets(2, ibau_clean_acc=91.0) if r["condition"] == "badnets" and r["seed"] == 2
            else r for r in rows]
    c = positive_controls(rows)
    assert c["seeds"][2]["ibau_pass"] is False  # ASR drop 70, but clean drop 6.1 > 5
    assert c["defenses"]["ibau"]["status"] == "fail"


def test_nc_needs_two_of_three_seeds(rows):
    rows = [_badnets(r["seed"], nc_flag_before=r["seed"] == 0) if r["condition"] == "badnets"
            else r for r in rows]
    assert positive_controls(rows)["defenses"]["nc"]["status"] == "fail"


def test_a_failing_defense_is_not_evidence_in_every_table(rows):
    c = positive_controls(rows)
    table = controls_display(c)
    assert table.headers == ["defense", "must", "seed 0", "seed 1", "seed 2",
                             "positive control"]
    by = {r[0]: r for r in table.rows}
    assert by["I-BAU"][-1] == "pass"
    assert by["I-BAU"][2] == "ASR 100.0 → 9.0, clean 97.0 → 95.5"
    assert by["Cognitive Distillation"][3] == "AUROC 0.850"
    assert by["Cognitive Distillation"][-1] == f"FAIL: its attack results are {NOT_EVIDENCE}"
    assert by["Neural Cleanse"][3] == "missed (index 1.20)"

    shown = backdoor_display(backdoor_table(rows), c)
    col = {h: i for i, h in enumerate(shown.headers)}
    for line in shown.rows:
        cd = [line[col["CD AUROC before"]], line[col["CD AUROC after"]]]
        if line[1] == "badnets":  # the control itself keeps its numbers
            assert NOT_EVIDENCE not in cd
        else:
            assert cd == [NOT_EVIDENCE, NOT_EVIDENCE]
            # defenses that passed keep their numbers on the attack
            assert line[col["I-BAU ASR"]] == "65.0 ± 0.0"
            assert line[col["NC flagged after"]] == "0/3"

    v = backdoor_verdict(rows)
    assert v["evidence"] == ["ibau", "nc"] and v["not_evidence"] == ["cd"]
    text = verdict_text(v)
    # the headline first, then the controls before any finding
    assert text.startswith(v["headline_text"] + " Positive controls on BadNets: I-BAU pass")
    assert (f"the attack results of Cognitive Distillation are {NOT_EVIDENCE}, and \"the "
            "defenses miss the woken backdoor\" is not shown for it") in text


def test_no_badnets_rows_means_no_evidence(rows, tmp_path):
    rows = [r for r in rows if r["condition"] != "badnets"]
    v = backdoor_verdict(rows)
    assert {x["status"] for x in v["controls"]["defenses"].values()} == {"not run"}
    assert v["evidence"] == []
    # NC's own columns and the verdict's say so too
    line = verdict_display(v).rows[0]
    assert line[-3] == NOT_EVIDENCE  # then "activated" and "woken by the request"
    assert f"Neural Cleanse flagged the target in 0/3 seeds ({NOT_EVIDENCE})" in verdict_text(v)
    md = write_backdoor_report(rows, tmp_path)["md"].read_text()
    # the report opens with the control table
    assert md.index("## Positive controls") < md.index("Dataset `mnist`")
    assert md.count(f"not run: its attack results are {NOT_EVIDENCE}") == 3


def test_a_defense_switched_off_is_not_run(rows):
    rows = [{**r, "ibau_asr": None, "ibau_clean_acc": None} for r in rows]
    c = positive_controls(rows)
    assert c["defenses"]["ibau"]["status"] == "not run"
    assert c["defenses"]["ibau"]["reached"] == "no BadNets scan"


def test_cd_gamma_follows_the_resolution():
    from dormant.defenses import CognitiveDistillationConfig
    from dormant.errors import DormantError

    assert CognitiveDistillationConfig.for_resolution(32, 32).gamma == pytest.approx(0.01)
    mnist = CognitiveDistillationConfig.for_resolution(28, 28, steps=50)
    assert mnist.gamma == pytest.approx(0.01 * 1024 / 784) and mnist.steps == 50
    assert CognitiveDistillationConfig.for_resolution(8, 8).gamma == pytest.approx(0.16)
    with pytest.raises(DormantError, match="image size must be positive"):
        CognitiveDistillationConfig.for_resolution(0, 28)
