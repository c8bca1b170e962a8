"""A new defense or a new request check is one file plus one registration: here a throwaway
of each is registered from outside the package and runs where the built-ins run (the backdoor
study's scan path and report; the request's measurements, policy and verdict)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from pydantic import Field
from torch import nn

from dormant.defenses import available_defenses, get_defense, register_defense
from dormant.defenses import registry as defense_registry
from dormant.engine import Recipe
from dormant.errors import DormantError
from dormant.experiments.backdoor_scan import Scanner
from dormant.experiments.backdoor_spec import BackdoorSpec
from dormant.report.backdoor import backdoor_display, backdoor_table, positive_controls
from dormant.requests import checks as check_registry
from dormant.requests.checks import (
    CheckBudget,
    RequestData,
    available_checks,
    model_state,
    register_check,
)
from dormant.requests.policy import Check, Policy, judge, load_policy, verdict
from dormant.settings import Settings


class ProbeConfig(Settings):
    """A throwaway detector: the mean logit of the target class on some defender images."""

    images: int = Field(8, ge=1)
    scale: float = 1.0


class WipeConfig(Settings):
    """A throwaway mitigation that changes nothing."""

    passes: int = Field(1, ge=1)


@pytest.fixture
def registries():
    """Whatever a test registers is gone afterwards."""
    defenses, checks = dict(defense_registry._DEFENSES), dict(check_registry._CHECKS)
    yield
    defense_registry._DEFENSES.clear()
    defense_registry._DEFENSES.update(defenses)
    check_registry._CHECKS.clear()
    check_registry._CHECKS.update(checks)


def _register_defenses(calls: list):
    @register_defense("probe", ProbeConfig, label="Probe", columns=("probe_score",),
                      presets={"cpu": ProbeConfig(images=4)}, study_preset=None,
                      report={"probe_score_before": "probe before",
                              "probe_score_after": "probe after"})
    def probe(cfg, ctx, model, trigger):
        calls.append(("probe", cfg))
        x = ctx.x_def[: cfg.images].float() / 255
        with torch.no_grad():
            score = float(model(x)[:, ctx.target].mean()) * cfg.scale
        return {"probe_score": round(score, 4)}, {"probe_inputs": ctx.x_def[: cfg.images]}

    @register_defense("wipe", WipeConfig, label="Wipe", stage="mitigate",
                      columns=("wipe_asr",), study_preset=None)
    def wipe(cfg, ctx, model, trigger):
        calls.append(("wipe", cfg))
        return {"wipe_asr": ctx.metrics(model, trigger)["asr"]}, {}


def _tiny_study(tmp_path, defenses: dict):
    g = torch.Generator().manual_seed(0)
    ds = SimpleNamespace(x_test=torch.randint(0, 256, (60, 1, 4, 4), dtype=torch.uint8,
                                              generator=g),
                         y_test=torch.arange(60) % 2)
    spec = BackdoorSpec(trigger={"kind": "patch", "size": 2, "amplitude": 1.0},
                        defenses={"defense_size": 20, **defenses})
    victim = SimpleNamespace(x_clean=ds.x_test, seed=0, num_classes=2,
                             planted=SimpleNamespace(trigger=spec.trigger))
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    return Scanner(spec, ds, victim, tmp_path, None), model


def test_a_defense_registered_outside_runs_in_the_study_scan(tmp_path, registries):
    calls: list = []
    _register_defenses(calls)
    assert available_defenses()[-2:] == ["probe", "wipe"]
    assert get_defense("probe").summary.startswith("A throwaway detector")
    assert get_defense("probe").preset("cpu").images == 4
    # off by default (study_preset None): a study names it; the built-ins switched off
    off = {"nc": False, "cd": False, "ibau": False}
    scan, model = _tiny_study(tmp_path, off)
    assert scan.d.config("probe") is None
    row = scan.before("poisoned", model, None)
    assert row["probe_score_before"] is None and calls == []
    assert row["nc_index_before"] is None and row["cd_auroc_before"] is None

    scan, model = _tiny_study(tmp_path, {**off, "probe": {"scale": 2.0}, "wipe": True})
    assert scan.d.config("probe") == ProbeConfig(images=4, scale=2.0)  # over its cpu preset
    row = scan.before("poisoned", model, None)
    assert isinstance(row["probe_score_before"], float)
    assert row["artefact_before"] == "artefacts/seed0-poisoned-before.safetensors"
    assert (tmp_path / row["artefact_before"]).is_file()
    assert scan.after("attack-x", model)["probe_score_after"] == row["probe_score_before"]
    assert set(scan.mitigate(model, None)) == {"ibau_asr", "ibau_clean_acc", "wipe_asr"}
    assert [c[0] for c in calls] == ["probe", "probe", "wipe"]

    # its report columns show in the conditions table; with no control it is not judged
    rows = [{"method": "none", "condition": "none", "seed": 0, "status": "ok",
             "asr_before": 10.0, "asr_after": 10.0, **row}]
    table = backdoor_display(backdoor_table(rows), positive_controls(rows))
    h = table.headers
    assert h.index("probe before") + 1 == h.index("probe after") and h[-1] == "seeds"
    assert "probe" not in positive_controls(rows)["defenses"]


def test_a_study_names_only_registered_defenses(registries):
    from dormant.settings import validate

    with pytest.raises(DormantError, match="unknown defense 'probe'"):
        validate(BackdoorSpec, {"defenses": {"probe": True}}, "study file s.yaml")
    _register_defenses([])
    spec = validate(BackdoorSpec, {"defenses": {"probe": True}}, "study file s.yaml")
    assert spec.defenses.config("probe") == ProbeConfig(images=4)
    with pytest.raises(DormantError, match=r"key 'defenses\.probe\.images': "):
        validate(BackdoorSpec, {"defenses": {"probe": {"images": 0}}}, "study file s.yaml")
    # the flat keys of before the nesting say where they went
    with pytest.raises(DormantError, match=r"write nc: \{epochs: 5\}"):
        validate(BackdoorSpec, {"defenses": {"nc_epochs": 5}}, "study file s.yaml")


def _weights(model: nn.Module, data, budget) -> dict:
    with torch.no_grad():
        return {"weight_norm": round(float(sum(p.norm() for p in model.parameters())), 4)}


def _register_check():
    @register_check("weight_growth", group="sanity", warn=0.1, fail=None, measure=_weights)
    def weight_growth(t, m) -> list[Check]:
        """The parameters' norm growing, as a share of the old one."""
        b, a = m["before"]["weight_norm"], m["after"]["weight_norm"]
        value = (a - b) / b
        return [Check("weight_growth", "sanity", round(value, 4), t.warn, t.fail,
                      t.status(value), f"weight norm {b:.2f} -> {a:.2f}")]


BASE = {"before": {"retain_acc": 99.0, "test_acc": 96.0, "forget_acc": 100.0, "mia_auc": 0.5,
                   "nc_norms": [10.0] * 2, "uap_success": [20.0] * 2, "weight_norm": 4.0},
        "after": {"retain_acc": 99.0, "test_acc": 96.0, "forget_acc": 96.0, "mia_auc": 0.5,
                  "nc_norms": [10.0] * 2, "uap_success": [20.0] * 2, "weight_norm": 5.0},
        "tamper": {}, "budget": {}}


def test_a_check_registered_outside_is_measured_judged_and_in_the_policy(tmp_path, registries):
    assert "weight_growth" not in available_checks()
    with pytest.raises(DormantError, match="unknown key 'weight_growth'"):
        load_policy(_write(tmp_path, "weight_growth: {warn: 0.5}\n"))
    _register_check()
    assert available_checks()[-1] == "weight_growth"
    assert Policy().weight_growth.warn == 0.1  # its own default level
    # the default policy warns on a 25% growth; a policy key moves the level
    checks = judge(Policy(), BASE)
    assert checks[-1].name == "weight_growth" and checks[-1].status == "warn"
    assert verdict(checks) == "warn"
    loose = load_policy(_write(tmp_path, "weight_growth: {warn: 0.5}\n"))
    assert (loose.weight_growth.warn, loose.weight_growth.fail) == (0.5, None)
    assert verdict(judge(loose, BASE)) == "pass"
    # and it is measured on each model the request checks
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8, generator=g)
    y = torch.arange(40) % 2
    data = RequestData(x, y, x.clone(), y.clone(), torch.arange(10), torch.arange(0),
                       torch.arange(10, 40), Recipe(10), 2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    skip = {"nc_norms": [1.0, 1.0], "uap_success": [0.0, 0.0]}
    state = model_state(model, data, CheckBudget(mia_size=10), known=skip)
    assert state["weight_norm"] == _weights(model, data, None)["weight_norm"]
    assert not math.isnan(state["retain_acc"])


def _write(tmp_path, text: str):
    p = tmp_path / "policy.yaml"
    p.write_text(text)
    return p
