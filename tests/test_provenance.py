"""Issue 22, item 5: a stale cache cannot serve a changed method. Cache keys hash every
hyper-parameter a method runs with (class defaults included) and the method's code revision,
so changing a class default, or any line of the method's file, gives new keys for its
unlearned models, calibrations and study rows."""

from __future__ import annotations

import importlib.util
import sys
import textwrap

import pytest

from dormant.experiments.relearn import relearn_cells
from dormant.experiments.spec import RelearnSpec
from dormant.unlearn import base as method_registry
from dormant.unlearn import method_provenance, method_revision

METHOD = '''
"""A throwaway method for the provenance test."""
from dormant.unlearn.base import Positive, hyperparameters, register_method


@hyperparameters
class ProbeHparams:
    """A method that returns the model it was given."""

    lr: Positive = {lr}
    steps: int = 10


@register_method("provenance_probe", ProbeHparams)
def probe(model, data, hp, ctx):
    return model  # {comment}
'''


@pytest.fixture
def probe_file(tmp_path):
    """Writes the probe method's file and imports it; gone from the registry afterwards."""
    saved = dict(method_registry._METHODS)

    def write(lr: str = "1e-3", comment: str = "unchanged") -> None:
        path = tmp_path / "provenance_probe.py"
        path.write_text(textwrap.dedent(METHOD.format(lr=lr, comment=comment)))
        spec = importlib.util.spec_from_file_location("provenance_probe", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["provenance_probe"] = module
        spec.loader.exec_module(module)

    yield write
    method_registry._METHODS.clear()
    method_registry._METHODS.update(saved)
    sys.modules.pop("provenance_probe", None)


def _cell_keys(digits) -> list[str]:
    spec = RelearnSpec(dataset="digits", methods=["provenance_probe"], seeds=[0], k=[0],
                       calibrate="none")
    return sorted(c.key for c in relearn_cells(spec, digits) if c.pipeline == "provenance_probe")


def test_a_changed_class_default_gives_new_keys(probe_file, digits):
    probe_file(lr="1e-3")
    first, keys = method_provenance("provenance_probe", {}), _cell_keys(digits)
    assert first["resolved"] == {"lr": 1e-3, "steps": 10}
    probe_file(lr="2e-3")  # the class default changes; the study file sets nothing
    second = method_provenance("provenance_probe", {})
    assert second["resolved"]["lr"] == 2e-3
    assert _cell_keys(digits) != keys
    # a value the user sets explicitly resolves the same, yet the code changed under it
    assert method_provenance("provenance_probe", {"lr": 5e-3})["resolved"] == \
        {"lr": 5e-3, "steps": 10}
    assert second["code"] != first["code"]


def test_a_changed_line_of_the_method_gives_new_keys(probe_file, digits):
    probe_file(comment="before the fix")
    before, keys = method_revision("provenance_probe"), _cell_keys(digits)
    probe_file(comment="after the fix")  # same defaults, other code
    assert method_provenance("provenance_probe", {})["resolved"] == {"lr": 1e-3, "steps": 10}
    assert method_revision("provenance_probe") != before
    assert _cell_keys(digits) != keys
    # and nothing changed, nothing changes: the key is a function of code and values
    probe_file(comment="after the fix")
    assert _cell_keys(digits) == _cell_keys(digits)
    assert method_revision("provenance_probe") == method_revision("provenance_probe")


def test_every_built_in_method_has_a_revision():
    from dormant.unlearn import available_methods

    revisions = {m: method_revision(m) for m in available_methods()}
    assert all(len(r) == 16 for r in revisions.values())
    # methods in different files have different revisions
    assert revisions["gradient_ascent"] != revisions["scrub"]


def test_a_revision_hashes_the_engine_a_method_imports_when_it_runs():
    """Methods import the engine inside their functions and ``dormant.engine`` loads its names
    lazily: the revision still follows them to the training loop and the evaluation."""
    from dormant.unlearn.base import method_modules

    modules = method_modules("gradient_ascent")
    assert {"dormant.engine.loop", "dormant.engine.evaluation", "dormant.engine.recipe",
            "dormant.unlearn.base", "dormant.unlearn.gradient_ascent"} <= set(modules)
    assert "dormant.unlearn.perturb" in method_modules("weight_distortion")
    assert "dormant.models.features" in method_modules("circuit_breakers")


def test_a_new_protocol_gives_new_keys_and_old_rows_are_flagged(digits, monkeypatch):
    """Rows made under one protocol are never reused under another: the tag is in every
    non-reference cell's key (and calibration's), and a report of rows made under another
    tag says so."""
    import dataclasses

    import dormant.experiments.relearn as relearn_mod
    import dormant.report.relearn as report_mod
    from dormant.experiments import RelearnSpec
    from dormant.experiments.protocol import PROTOCOL

    spec = RelearnSpec(dataset="digits", methods=["gradient_ascent"], k=[0])
    before = {c.pipeline: c.key for c in relearn_cells(spec, digits)}
    other = dataclasses.replace(PROTOCOL, sha256="f" * 64)
    monkeypatch.setattr(relearn_mod, "PROTOCOL", other)
    after = {c.pipeline: c.key for c in relearn_cells(spec, digits)}
    assert before["gradient_ascent"] != after["gradient_ascent"]
    assert before["retrain"] == after["retrain"]  # the references use no rule of it
    rows = [{"method": "gradient_ascent", "protocol": other.tag},
            {"method": "retrain", "protocol": "v0:old"}]
    assert report_mod.protocol_line(rows).startswith(f"**Rows made under protocol {other.tag}")
    assert report_mod.protocol_line([{"method": "gradient_ascent", "protocol": PROTOCOL.tag},
                                     rows[1]]) == f"Protocol {PROTOCOL.tag} " \
        "(experiments/protocol.yaml)."
