"""The root of the command line, which starts without torch.

``dormant`` and ``dormant --help`` list the commands from :data:`COMMANDS`, a table of their
names and help texts, and import nothing of the package's heavy parts; a command loads the
full command line (:mod:`dormant.cli`) and runs there. ``tests/test_cli_startup.py`` checks that
the table is the full command line's, name for name and word for word.
"""

from __future__ import annotations

import sys
import warnings
from typing import Annotated

import typer

from dormant import plugins

HELP = "Test whether machine unlearning really removes what it claims to."

COMMANDS: tuple[tuple[str, str], ...] = (
    ("forget", "Process deletion requests: record, unlearn, check, judge, record the outcome. "
               "Several\n--ids (or a folder of ids files) are one batch: one unlearning run for "
               "all of them, and\neach request's own ledger rows, checks, verdict and report."),
    ("audit", "Check a model unlearned elsewhere: the same checks, verdict and report as "
              "forget."),
    ("inspect", "Scan a seeded random sample of a store model's training set with the "
                "per-sample\ndetectors, and rank the contributors of its data manifest by their "
                "flagged share."),
    ("approve", "Sign off a version kept back by a warning: promote it, with who and why in "
                "the\nledger. Refused once anything else was promoted since, or if it was "
                "decided already."),
    ("reject", "Refuse a version kept back by a warning for good, with who and why in the "
               "ledger."),
    ("plan", "How many cells, which artefacts, and how long on W workers (nothing is "
             "trained)."),
    ("publish", "Copy a run's rows (trimmed of curves) and its provenance into a results "
                "folder."),
    ("tables", "Re-render every ``<!-- dormant:table ... -->`` block from its committed rows."),
    ("serve", "Serve the store over HTTP: the JSON API (OpenAPI at /docs) and the dashboard "
              "(/ui).\nRequests are queued in the store's service.sqlite and processed one at a "
              "time; a\nrestarted service resumes what a killed one left."),
    ("demo", "The main job on the embedded digits data: train, unlearn, attack, report."),
    ("relearn", "The relearning study on any dataset: unlearn, attack, report (resumable)."),
    ("backdoor", "The clean-unlearning backdoor study: plant, request, unlearn, scan, report\n"
                 "(resumable)."),
    ("train", "Train a model with the dataset's memorising recipe and save it (safetensors)."),
    ("unlearn", "Apply an unlearning method to a saved checkpoint."),
    ("methods", "List the unlearning methods with their defaults and sources, or with --preset "
                "the\nvalues each one runs under that preset and where they come from."),
    ("plugins", "List the plugins found (entry points, --plugin, DORMANT_PLUGINS), what each\n"
                "registered, and those that failed to load."),
    ("store", "The model store: add and list versions."),
    ("ledger", "The tamper-evident ledger: verify, head, show, export."),
    ("token", "The service's bearer tokens: create, list, revoke."),
)
"""Every command of :mod:`dormant.cli`, in its order, with its help text."""


def root_options(
    debug: Annotated[bool, typer.Option(
        "--debug", help="on bad input, raise with the full traceback instead of one error line "
        "(may stand anywhere on the command line)")] = False,
    plugin: Annotated[list[str] | None, typer.Option(
        "--plugin", help="a module (dotted, importable from here) or .py file that registers "
        "methods, models, datasets, checks or defenses; repeatable")] = None,
) -> None:
    """The options before the command, which every command shares."""
    plugins.use(*(plugin or ()))


def one_line_warnings() -> None:
    """Show a plugin's warning as one line, as every other warning of the CLI (the rest as
    Python shows them). Set before anything loads a plugin."""
    show = warnings.showwarning
    if getattr(show, "one_line", False):
        return

    def show_line(message, category, *args, **kwargs) -> None:
        from dormant.errors import DormantWarning  # a cache the machine cannot write

        if issubclass(category, plugins.PluginWarning | DormantWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            show(message, category, *args, **kwargs)

    show_line.one_line = True
    warnings.showwarning = show_line


def _command_name(args: list[str]) -> str | None:
    """The command ``args`` run, or None when they only ask for the root's help."""
    rest = iter(args)
    for a in rest:
        if a == "--plugin":
            next(rest, None)
        elif a.startswith("--plugin=") or a == "--debug":
            continue
        elif a == "--help":
            return None
        else:
            return a
    return None


def _listing() -> typer.Typer:
    app = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP)
    app.callback()(root_options)
    for name, text in COMMANDS:
        app.command(name, help=text)(lambda: None)
    return app


def entry() -> None:
    """``dormant``: the root's help from the table, anything else from :mod:`dormant.cli`."""
    one_line_warnings()
    if _command_name(sys.argv[1:]) is None:
        _listing()(args=["--help"], prog_name="dormant")
    from dormant.cli import entry as run

    run()
