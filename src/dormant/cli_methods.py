"""``dormant methods`` and ``dormant plugins``: what can be named in a study, read from the
registries without importing torch (method code loads when it runs), so both start at once."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer
from rich.table import Table

from dormant import plugins
from dormant.cli_common import _check_positive, console


def methods(
    preset: Annotated[str | None, typer.Option(
        help="show the values each method runs under this preset, as every command resolves "
             "it (relearn: the dataset's, e.g. digits; backdoor and forget: backdoor; "
             "unlearn and the API: paper)")] = None,
    n_train: Annotated[int | None, typer.Option(
        help="training-set size, to turn a preset's epochs into steps")] = None,
) -> None:
    """List the unlearning methods with their defaults and sources, or with --preset the
    values each one runs under that preset and where they come from."""
    from dormant.unlearn import (
        PAPER,
        available_methods,
        get_method,
        get_preset,
        make_hparams,
        resolve_hparams,
    )

    _check_positive(n_train=n_train)
    if preset is None:
        t = Table(title="unlearning methods")
        for col in ("name", "defaults", "what and source"):
            t.add_column(col)
        for name in available_methods():
            info = get_method(name)
            defaults = ", ".join(f"{k}={v}" for k, v in info.defaults().items()) or "-"
            src = plugins.source("methods", name)
            where = "" if src is None or src.level == "built-in" else f" (from {src})"
            t.add_row(name, defaults, info.summary + where)
        console.print(t)
        return
    t = Table(title=f"unlearning methods under preset {preset}")
    for col in ("name", f"values under {preset}", "where they come from"):
        t.add_column(col)
    for name in available_methods():
        p = get_preset(name, preset)
        if p.epochs is not None and n_train is None:
            values = dataclasses.asdict(make_hparams(name, p.values))
            values["steps"] = f"{p.epochs:g} epochs (pass --n-train for steps)"
        else:
            values = dataclasses.asdict(make_hparams(name, resolve_hparams(
                name, preset, n_train=n_train)))
        own = preset == PAPER or preset in get_method(name).presets
        source = p.doc if own else f"no {preset} preset: the class defaults"
        t.add_row(name, ", ".join(f"{k}={v}" for k, v in values.items()) or "-", source)
    console.print(t)


def plugins_cmd() -> None:
    """List the plugins found (entry points, --plugin, DORMANT_PLUGINS), what each
    registered, and those that failed to load."""
    found = plugins.plugins()
    if not found:
        console.print("no plugins: none installed in the groups "
                      f"{', '.join(plugins.GROUPS.values())}, and no --plugin given",
                      markup=False, highlight=False, soft_wrap=True)
        return
    t = Table(title="plugins")
    for col in ("source", "status", "registered"):
        t.add_column(col, overflow="fold")
    for p in found:
        status = f"failed: {p.error}" if p.error else "loaded"
        t.add_row(str(p.source), status, ", ".join(p.registered) or "-")
    console.print(t)


def register(app: typer.Typer) -> None:
    app.command()(methods)
    app.command("plugins")(plugins_cmd)
