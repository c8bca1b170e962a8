"""The source of a tiny plugin package, ``tiny-plugin``: one method, one model, one dataset and
one request check, registered from outside dormant (``tests/test_plugins.py`` installs it)."""

from __future__ import annotations

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "tiny-plugin"
version = "0.1"

[project.entry-points."dormant.methods"]
tiny = "tiny_plugin.components"
[project.entry-points."dormant.models"]
tiny = "tiny_plugin.components"
[project.entry-points."dormant.datasets"]
tiny = "tiny_plugin.components"
[project.entry-points."dormant.checks"]
tiny = "tiny_plugin.components"
"""

COMPONENTS = '''\
"""One of each: a method, a model, a dataset and a request check."""

import dataclasses

import numpy as np
import torch
from torch import nn

from dormant.data.dataset import Dataset
from dormant.data.sources import register_source
from dormant.engine import fit
from dormant.models.registry import register_model
from dormant.requests.checks import register_check
from dormant.requests.policy import Check
from dormant.unlearn.base import Positive, StepHparams, hyperparameters, register_method


@hyperparameters
class RetainBoostHparams(StepHparams):
    """Retain boost: fine-tune on the retain set at ``boost`` times the learning rate."""

    boost: Positive = 30.0


@register_method("retain_boost", RetainBoostHparams)
def retain_boost(model, data, hp, ctx):
    recipe = hp.recipe(ctx.recipe)
    recipe = dataclasses.replace(recipe, lr=recipe.lr * hp.boost)
    fit(model, data.x, data.y, data.retain, recipe,
        generator=torch.Generator().manual_seed(ctx.seed), progress=ctx.progress,
        label="retain_boost")
    return model


@register_model("wide-mlp")
def wide_mlp(spec):
    """One hidden layer of 256 units."""
    d = spec.in_channels * spec.image_size * spec.image_size
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 256), nn.ReLU(),
                         nn.Linear(256, spec.num_classes))


@register_source("halfdigits")
def halfdigits(arg, root, download):
    """sklearn's digits 0-4 only: five classes."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    keep = bunch.target < 5
    x = np.round(bunch.data[keep].reshape(-1, 1, 8, 8) * 255.0 / 16.0).astype(np.uint8)
    y = bunch.target[keep].astype(np.int64)
    test = np.arange(len(y)) % 5 == 0
    return Dataset(name="halfdigits", x_train=torch.from_numpy(x[~test]),
                   y_train=torch.from_numpy(y[~test]), x_test=torch.from_numpy(x[test]),
                   y_test=torch.from_numpy(y[test]), classes=tuple("01234"))


def _norm(model, data, budget):
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    return {"weight_norm": float(flat.norm())}


@register_check("weight_growth", group="sanity", warn=0.5, fail=None, measure=_norm)
def weight_growth(t, m):
    """The parameters' norm growing, as a share of the old one."""
    b, a = m["before"]["weight_norm"], m["after"]["weight_norm"]
    value = (a - b) / b
    return [Check("weight_growth", "sanity", round(value, 6), t.warn, t.fail, t.status(value),
                  f"weight norm {b:.4f} -> {a:.4f}")]
'''

BROKEN = "import not_a_module_anywhere  # noqa\n"


def write_package(root, *, broken: bool = False):
    """The package's source tree under ``root``; ``broken`` adds a second entry point whose
    module fails to import."""
    pkg = root / "tiny_plugin"
    pkg.mkdir(parents=True)
    pyproject = PYPROJECT
    if broken:
        pyproject += '[project.entry-points."dormant.defenses"]\nbroken = "tiny_plugin.broken"\n'
        (pkg / "broken.py").write_text(BROKEN)
    (root / "pyproject.toml").write_text(pyproject)
    (pkg / "__init__.py").write_text("")
    (pkg / "components.py").write_text(COMPONENTS)
    return root
