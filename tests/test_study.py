"""The study grid: method entries and then: chains, failed cells, and every row's columns."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from dormant.errors import DormantError
from dormant.experiments import MethodEntry, RelearnSpec, run_relearn
from dormant.experiments.pipeline import resolve
from dormant.experiments.relearn import method_hparams, unlearned_model
from dormant.metrics import l2_distance
from dormant.store import ModelCache
from dormant.unlearn import unlearn

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _names(spec):
    return {p.name: [(s.method, s.hparams) for s in p.stages] for p in resolve(spec)}


def test_entries_resolve_to_pipelines_with_their_own_hparams():
    spec = RelearnSpec(methods=[
        "finetune",
        {"name": "ga_fast", "method": "gradient_ascent", "hparams": {"lr": 1e-3}},
        {"name": "ga_then_ft", "method": "gradient_ascent", "then": "ft_slow"},
        {"name": "ft_slow", "method": "finetune", "hparams": {"lr": 1e-6}},
        {"name": "ga_then_ng", "method": "gradient_ascent", "then": "neggrad_plus"},
    ], hparams={"finetune": {"steps": 7}, "neggrad_plus": {"steps": 3}})
    p = _names(spec)
    assert list(p)[:2] == ["original", "retrain"]
    assert p["finetune"] == [("finetune", {"steps": 7})]
    assert p["ga_fast"] == [("gradient_ascent", {"lr": 1e-3})]
    assert p["ga_then_ft"] == [("gradient_ascent", {}), ("finetune", {"lr": 1e-6})]
    assert p["ga_then_ng"] == [("gradient_ascent", {}), ("neggrad_plus", {"steps": 3})]


@pytest.mark.parametrize("methods, hparams, needle", [
    ([{"name": "a", "method": "finetune", "then": "b"},
      {"name": "b", "method": "gradient_ascent", "then": "a"}], {}, "chain loops: a -> b -> a"),
    ([{"name": "a", "method": "nope"}], {}, "entry 'a': unknown method 'nope'"),
    ([{"name": "a", "method": "finetune", "then": "nope"}], {}, "then: unknown method 'nope'"),
    ([{"name": "a", "method": "finetune", "hparams": {"lr": "fast"}}], {},
     "hyper-parameter 'lr'"),
    ([{"name": "a", "method": "finetune", "hparams": {"alpha": 1}}], {},
     "no hyper-parameter 'alpha'"),
    (["finetune", "finetune"], {}, "'finetune' appears twice"),
    (["finetune"], {"scrub": {"lr": 1.0}}, "hparams given for 'scrub'"),
    ([{"name": "retrain", "then": "finetune"}], {}, "reference model"),
])
def test_bad_entries_are_refused_before_any_work(methods, hparams, needle):
    spec = RelearnSpec(methods=methods, hparams=hparams)
    with pytest.raises(DormantError, match=needle.replace("(", r"\(")):
        resolve(spec)


def test_spec_takes_scalars_or_lists_and_refuses_an_empty_grid():
    spec = RelearnSpec(forget="class:0", attack_lr=1e-4, attack_steps=10, k=0)
    assert spec.forget == ["class:0"] and spec.attack_lr == [1e-4] and spec.k == [0]
    for key in ("methods", "seeds", "k", "relearn_sets"):
        with pytest.raises(ValueError, match="must not be empty"):
            RelearnSpec(**{key: []})
    with pytest.raises(ValueError, match="unknown relearn set 'train'"):
        RelearnSpec(relearn_sets=["train"])
    with pytest.raises(ValueError, match="extra"):
        MethodEntry(name="a", steps=3)


def test_every_config_in_the_repo_is_a_valid_study():
    from dormant.experiments import BackdoorSpec
    from dormant.unlearn import make_hparams

    files = sorted(CONFIGS.glob("*.yaml"))
    assert len(files) >= 4
    for f in files:
        if f.name == "policy.yaml":  # a deletion-request policy, tested in test_policy.py
            continue
        data = yaml.safe_load(f.read_text())
        if "trigger" in data:  # the backdoor study's files
            spec = BackdoorSpec(**data)
            assert spec.attack().poison.per_class >= 1 and len(spec.seeds) >= 3, f
            for method, hp in spec.hparams.items():
                make_hparams(method, hp)
            continue
        spec = RelearnSpec(**data)
        assert len(resolve(spec)) >= 5, f


def test_a_chain_continues_from_the_first_stage_and_anchors_on_the_original(digits_setup,
                                                                             tmp_path):
    """A then: chain equals running its stages by hand; the second stage's ctx.pretrained is
    the original model, not the first stage's result."""
    prep = digits_setup
    spec = RelearnSpec(methods=[{"name": "c", "method": "gradient_ascent", "then": "finetune",
                                 "hparams": {"steps": 20, "lr": 1e-4}}],
                       hparams={"finetune": {"steps": 15, "lr": 1e-4}})
    pipe = next(p for p in resolve(spec) if p.name == "c")
    hps = [s.hparams for s in pipe.stages]
    chained, _ = unlearned_model(prep, pipe, hps, ModelCache(tmp_path), None)
    first = unlearn("gradient_ascent", prep.original, prep.unlearn_data(), prep.context(None),
                    **hps[0])
    import dataclasses
    ctx = dataclasses.replace(prep.context(None), pretrained=prep.original)
    by_hand = unlearn("finetune", first, prep.unlearn_data(), ctx, **hps[1])
    assert l2_distance(chained, by_hand) == 0.0
    assert l2_distance(chained, first) > 0.0
    # the cached chain loads back identical
    again, _ = unlearned_model(prep, pipe, hps, ModelCache(tmp_path), None)
    assert l2_distance(again, chained) == 0.0


def test_a_diverging_cell_is_a_failed_row_and_the_study_goes_on(tmp_path):
    spec = RelearnSpec(dataset="digits", device="cpu", k=[0], calibrate="none",
                       analysis=False, methods=["gradient_ascent", "finetune"],
                       hparams={"gradient_ascent": {"lr": 1e30, "steps": 60},
                                "finetune": {"steps": 10}})
    rows = run_relearn(spec, tmp_path / "out", cache_dir=tmp_path / "cache")
    by = {r["method"]: r for r in rows}
    assert by["gradient_ascent"]["status"] == "failed"
    assert "diverged" in by["gradient_ascent"]["error"]
    assert "nan" in by["gradient_ascent"]["error"]
    assert by["finetune"]["status"] == "ok" and by["retrain"]["status"] == "ok"
    # a rerun does not retry or duplicate the failed cell
    again = run_relearn(spec, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert len(again) == len(rows) == 4


def test_rows_carry_the_analysis_columns(tmp_path):
    spec = RelearnSpec(dataset="digits", device="cpu", k=[0], methods=["gradient_ascent"],
                       relearn_sets=["retain", "forget-only"], attack_lr=[1e-4, 1e-3],
                       attack_steps=[20], lmc_points=5, analysis_size=200,
                       hparams={"gradient_ascent": {"steps": 40}})
    rows = run_relearn(spec, tmp_path / "out", cache_dir=tmp_path / "cache")
    # forget-only has no k = 0 cell: 3 models x 1 k x 1 set x 2 learning rates
    assert len(rows) == 6
    assert {r["attack_lr"] for r in rows} == {1e-4, 1e-3}
    for r in rows:
        assert r["status"] == "ok"
        for key in ("relearn_set", "aurc", "l2_to_oracle", "barrier", "mia_auc",
                    "mia_auc_attacked", "mia_loss_auc", "mia_loss_auc_attacked"):
            assert key in r, key
        assert 0.0 <= r["mia_auc"] <= 1.0 and 0.0 <= r["mia_auc_attacked"] <= 1.0
    by = {(r["method"], r["attack_lr"]): r for r in rows}
    assert by[("retrain", 1e-4)]["l2_to_oracle"] == 0.0
    assert by[("original", 1e-4)]["lmc"] is None and by[("original", 1e-4)]["barrier"] is None
    lmc = by[("gradient_ascent", 1e-4)]["lmc"]
    assert lmc["t"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    # the curve's ends are the two models themselves
    assert lmc["forget_acc"][0] == pytest.approx(100.0)
    assert lmc["forget_acc"][-1] == pytest.approx(by[("gradient_ascent", 1e-4)]["forget_acc"])
    # a stronger attack recovers at least as much (same unlearned model, same seed)
    assert by[("gradient_ascent", 1e-3)]["forget_acc_attacked"] >= \
        by[("gradient_ascent", 1e-4)]["forget_acc_attacked"]
    ga = by[("gradient_ascent", 1e-4)]
    assert ga["aurc"] <= ga["recovery"] + 1e-9  # a mean over the curve never beats its best
    assert torch.tensor(ga["curve_forget_acc"]).max().item() == pytest.approx(
        ga["forget_acc_attacked"], abs=1e-3)


def test_each_seed_stops_at_its_own_oracle_and_shares_the_calibrated_strength(tmp_path):
    """Calibration picks a strength on the first seed only; the stop target (and every
    other per-seed budget) is still each seed's own."""
    spec = RelearnSpec(dataset="digits", device="cpu", k=[0], seeds=[0, 1], analysis=False,
                       stop="oracle-leakable", methods=["gradient_ascent"], unlearn_steps=20,
                       attack_steps=10)
    rows = run_relearn(spec, tmp_path / "out", cache_dir=tmp_path / "cache")
    ga = {r["seed"]: r for r in rows if r["method"] == "gradient_ascent"}
    assert ga[0]["hparams"]["lr"] == ga[1]["hparams"]["lr"] == ga[0]["calibration"][0]["chosen"]
    # seed 1's split and oracle differ, so must its stop target
    assert ga[0]["hparams"]["stop_acc"] != ga[1]["hparams"]["stop_acc"]
    assert ga[0]["hparams"]["stop_acc"] == pytest.approx(ga[0]["calibration"][0]["goal"],
                                                         abs=1e-4)


def test_near_ties_go_to_the_weaker_value_in_either_direction():
    from dormant.experiments.calibrate import _pick
    from dormant.unlearn import Strength

    values, scores, usable = [1.0, 2.0, 3.0], [62.5, 79.1667, 95.0], [True] * 3
    # 62.5 and 79.1667 are one leakable image either side of 70.8333
    assert _pick(Strength("lr"), 70.8333, values, scores, usable, 2.0) == 1.0
    assert _pick(Strength("alpha", weaker="higher"), 70.8333, values, scores, usable,
                 2.0) == 2.0
    # a candidate out of the running (retain accuracy collapsed) is never picked
    assert _pick(Strength("lr"), 70.8333, values, scores, [False, True, True], 2.0) == 2.0


def _calibrate_ga(prep, tmp_path, **spec_kw):
    from dormant.experiments.calibrate import calibrate
    from dormant.experiments.pipeline import resolve
    from dormant.experiments.relearn import unlearned_model
    from dormant.store import ModelCache

    spec = RelearnSpec(dataset="digits", methods=["gradient_ascent"], unlearn_steps=30,
                       **spec_kw)
    pipe = resolve(spec)[2]
    hps = [method_hparams(spec, prep, s.method, s.hparams) for s in pipe.stages]
    cache = ModelCache(tmp_path)
    (cal,) = calibrate(prep, pipe, hps, [{}],
                       lambda p, h: unlearned_model(prep, p, h, cache, None)[0])
    return cal


def test_a_grid_that_misses_the_oracle_extends_then_says_so(digits_setup, tmp_path):
    """Gradient ascent at 1e-12: every candidate keeps the forget set as the original has it,
    far above the oracle. The grid grows by its own outermost step (0.3 / 0.1 = 3x) three
    times, the protocol's bound, and the calibration says it did not bracket the oracle."""
    from dormant.experiments.protocol import PROTOCOL

    cal = _calibrate_ga(digits_setup, tmp_path, unlearn_lr=1e-12)
    assert cal.extended == PROTOCOL.max_extensions == 3
    assert len(cal.values) == 4 + 3 and not cal.bracketed
    assert cal.values[4:] == pytest.approx([9e-13, 2.7e-12, 8.1e-12])
    assert min(cal.scores) > cal.goal  # every one too weak
    # the closest is kept (all tie at 100%: the weakest, by the tie rule), and it is said
    gaps = [abs(s - cal.goal) for s in cal.scores]
    assert gaps[cal.values.index(cal.chosen)] == min(gaps)


def test_a_grid_that_falls_short_extends_until_it_brackets(digits_setup, tmp_path):
    """At 30 steps gradient ascent's grid (1e-6 to 3e-5) stays above the oracle's 44% on the
    leakable ids (measured: 3e-5 -> 77.8%); one step more (9e-5) reaches 0%, and the grid
    brackets the oracle."""
    cal = _calibrate_ga(digits_setup, tmp_path)
    assert cal.bracketed and cal.extended == 1 and cal.values[4] == pytest.approx(9e-5)
    assert min(cal.scores[:4]) > cal.goal >= min(cal.scores)


@pytest.mark.parametrize("scores, retain, expect, extra", [
    # all too weak: one step stronger (3x the largest lr), which reaches the goal
    ({0.01: 99, 0.03: 98, 0.1: 97, 0.3: 95, 0.9: 50}, {}, True, [0.9]),
    # all too strong: steps weaker (1/3 of the smallest each time)
    ({0.01: 10, 0.03: 5, 0.1: 0, 0.3: 0, 0.01 / 3: 40, 0.01 / 9: 80}, {}, True,
     [0.01 / 3, 0.01 / 9]),
    # the strongest candidate breaks the retain set: it says nothing about the goal, and no
    # stronger value is tried past it, so the grid does not bracket
    ({0.01: 99, 0.03: 98, 0.1: 97, 0.3: 20}, {0.3: 10.0}, False, []),
    # one step stronger breaks it: the grid stops there and says so
    ({0.01: 99, 0.03: 98, 0.1: 97, 0.3: 95, 0.9: 20}, {0.9: 10.0}, False, [0.9]),
])
def test_extension_direction_and_stop(digits_setup, tmp_path, monkeypatch, scores, retain,
                                      expect, extra):
    """The grid's logic on scores given per lr factor (goal: the oracle's 70.8 or so)."""
    import dormant.experiments.calibrate as cal_mod

    prep = digits_setup
    base = method_hparams(RelearnSpec(dataset="digits"), prep, "gradient_ascent", {})["lr"]

    def fake(_prep, _strength, _leak, _retain, _train, _pipe, hps):
        f = hps[-1]["lr"] / base
        key = min(scores, key=lambda k: abs(k - f) / k)
        return float(scores[key] if scores[key] != 50 else prep.oracle_monitor_acc), \
            retain.get(key, 99.0)

    monkeypatch.setattr(cal_mod, "_score", fake)
    pipe = resolve(RelearnSpec(dataset="digits", methods=["gradient_ascent"]))[2]
    (cal,) = cal_mod.calibrate(prep, pipe, [{"lr": base}], [{}], lambda p, h: None)
    assert cal.bracketed is expect
    assert [v / base for v in cal.values[4:]] == pytest.approx(extra, rel=1e-4)


def test_a_pipeline_can_opt_out_of_calibration(tmp_path):
    """``calibrate: none`` on one entry: the sensitivity row at the reference's equal
    learning rates runs at the study's value beside the calibrated row of the same method."""
    spec = RelearnSpec(dataset="digits", device="cpu", k=[0], seeds=[0], unlearn_steps=30,
                       attack_steps=[6], eval_every=2, analysis=False, methods=[
                           "gradient_ascent",
                           {"name": "ga-uncalibrated", "method": "gradient_ascent",
                            "calibrate": "none"}])
    pipes = {p.name: p for p in resolve(spec)}
    assert pipes["gradient_ascent"].calibration(spec) == "oracle"
    assert pipes["ga-uncalibrated"].calibration(spec) == "none"
    rows = {r["method"]: r for r in run_relearn(spec, tmp_path / "out",
                                                cache_dir=tmp_path / "cache")}
    assert rows["gradient_ascent"]["calibration"] and not rows["ga-uncalibrated"]["calibration"]
    assert rows["ga-uncalibrated"]["hparams"]["lr"] == pytest.approx(1e-4)  # the study's lr
    assert rows["gradient_ascent"]["hparams"]["lr"] == \
        rows["gradient_ascent"]["calibration"][0]["chosen"]
    with pytest.raises(DormantError, match="reference model; it takes no"):
        resolve(RelearnSpec(dataset="digits", methods=[
            {"name": "retrain", "calibrate": "none"}]))


def test_a_knob_that_weakens_upwards_extends_the_other_way():
    """SSD's selection weighting and attenuation's factor weaken as they grow: stronger is
    one grid step below the smallest value, weaker one step above the largest."""
    from dormant.experiments.calibrate import _beyond
    from dormant.unlearn import Strength

    up = Strength("selection_weighting", (0.1, 0.3, 1.0, 3.0), weaker="higher")
    assert _beyond(up, [1.0, 3.0, 10.0, 30.0], stronger=True) == pytest.approx(1.0 / 3)
    assert _beyond(up, [1.0, 3.0, 10.0, 30.0], stronger=False) == pytest.approx(90.0)
    down = Strength("lr", (0.01, 0.03, 0.1, 0.3))
    assert _beyond(down, [1.0, 3.0, 10.0, 30.0], stronger=True) == pytest.approx(90.0)
    assert _beyond(down, [1.0, 3.0, 10.0, 30.0], stronger=False) == pytest.approx(1.0 / 3)
