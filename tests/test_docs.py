"""The guide's example method really works: one file, one registration, the same call shape."""

from __future__ import annotations

import re
from pathlib import Path

from dormant.engine import evaluate
from dormant.unlearn import available_methods, base, unlearn

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "adding-a-method.md"


def test_guide_example_registers_and_unlearns(digits_setup, monkeypatch):
    code = re.search(r"```python\n(.*?)```", GUIDE.read_text(), re.S).group(1)
    monkeypatch.setattr(base, "_METHODS", dict(base._METHODS))  # keep the registry clean
    exec(compile(code, str(GUIDE), "exec"), {})
    assert "forget_margin" in available_methods()
    prep = digits_setup
    model = unlearn("forget_margin", prep.original, prep.unlearn_data(), prep.context(None),
                    steps=20, lr=1e-3)
    before = evaluate(prep.original, prep.x, prep.y, prep.split.forget).loss
    assert evaluate(model, prep.x, prep.y, prep.split.forget).loss > before
