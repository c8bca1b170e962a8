"""``dormant publish`` and ``dormant tables``: published numbers come from committed rows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dormant.cli_common import console
from dormant.errors import DormantError
from dormant.store.files import atomic_write_text


def publish_cmd(
    run: Annotated[Path, typer.Argument(help="a study's output folder (its results.jsonl)")],
    dest: Annotated[Path, typer.Argument(help="the results folder to write, e.g. "
                                              "results/mnist-confirm")],
    command: Annotated[str, typer.Option(help="the command that made the run, as typed")],
    study: Annotated[Path | None, typer.Option(
        help="the study file (its budgets), kept in meta.json; leave it out only for a "
             "command with built-in settings (dormant demo)")] = None,
    commit: Annotated[str | None, typer.Option(
        help="the git commit the run was made at (default: this checkout's HEAD)")] = None,
) -> None:
    """Copy a run's rows (trimmed of curves) and its provenance into a results folder."""
    from dormant.report.published import publish

    if study is not None and not study.is_file():
        raise DormantError(f"--study {study}: no such file")
    out = publish(run, dest, command, study, commit)
    console.print(f"wrote {out / 'rows.jsonl'} and {out / 'meta.json'}", highlight=False)


def tables_cmd(
    files: Annotated[list[Path], typer.Argument(help="markdown files with dormant:table "
                                                     "blocks")],
    check: Annotated[bool, typer.Option(help="write nothing; exit 1 if a file differs from "
                                             "what its rows give")] = False,
) -> None:
    """Re-render every ``<!-- dormant:table ... -->`` block from its committed rows."""
    from dormant.report.published import render_text, tables_in

    stale = []
    for f in files:
        if not f.is_file():
            raise DormantError(f"{f}: no such file")
        try:
            text = f.read_text("utf-8")
        except UnicodeDecodeError:
            raise DormantError(f"{f}: not UTF-8 text") from None
        new = render_text(text, Path.cwd())
        if new != text:
            stale.append(f)
            if not check:
                atomic_write_text(f, new)
        console.print(f"{f}: {tables_in(text)} table(s)"
                      + (", differ from their rows" if new != text else ", up to date"),
                      highlight=False)
    if check and stale:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("publish")(publish_cmd)
    app.command("tables")(tables_cmd)
