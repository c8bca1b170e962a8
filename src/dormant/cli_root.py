"""The root of the command line, which starts without torch.

``dormant`` and ``dormant --help`` list the commands from :data:`COMMANDS`, a table of their
names and help texts, and import nothing of the package's heavy parts; ``methods`` and
``plugins`` run on their own (they read registries); any other command loads the full
command line (:mod:`dormant.cli`) and runs there. :func:`run` is every command line's error
handling. ``tests/test_cli_startup.py`` checks that
the table is the full command line's, name for name and word for word.
"""

from __future__ import annotations

import sys
import warnings
from typing import Annotated

import click
import typer

from dormant import plugins
from dormant.errors import DormantError, DormantWarning, environment_line
from dormant.settings import short

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
    """Show dormant's own warnings (a plugin's, a cache the machine cannot write) as one line,
    as every other message of the CLI; the rest as Python shows them. Set before anything
    loads a plugin."""
    show = warnings.showwarning
    if getattr(show, "one_line", False):
        return

    def show_line(message, category, *args, **kwargs) -> None:
        if issubclass(category, plugins.PluginWarning | DormantWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            show(message, category, *args, **kwargs)

    show_line.one_line = True
    warnings.showwarning = show_line


def _command_name(args: list[str]) -> str | None:
    """The command ``args`` name, or None when they name none (the root's help, or a usage
    error the full command line reports)."""
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


def _click_errors() -> tuple[type, ...]:
    """click's exception base, and the one of the copy of click that newer typers carry."""
    found: list[type] = [click.exceptions.ClickException]
    try:
        from typer.exceptions import TyperException

        found.append(TyperException)
    except ImportError:  # a typer on the real click
        pass
    return tuple(found)


_CLICK_ERRORS = _click_errors()


def run(app: typer.Typer, argv: list[str] | None = None) -> int:
    """Run ``app`` on ``argv``: bad input becomes one line on stderr and exit code 2
    (``--debug``, anywhere on the line, raises it instead)."""
    one_line_warnings()
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        # not standalone: click's usage errors come here, to be one line like every other
        rc = app(args=args, prog_name="dormant", standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 0
    except (typer.Abort, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
        return 130
    except _CLICK_ERRORS as e:  # a usage error: an unknown option, a value typer cannot parse
        if debug:
            raise
        ctx = getattr(e, "ctx", None)
        path = getattr(ctx, "command_path", "dormant") or "dormant"
        msg = " ".join(short(e.format_message(), 300).split())
        if not msg:  # no arguments at all: click has printed the help
            return 0
        print(f"error: {msg} (see {path} --help)", file=sys.stderr)
        return getattr(e, "exit_code", 2) or 2
    except DormantError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine, not the input: a full disk, a read-only folder
        if debug:
            raise
        print(f"error: {environment_line(e)}", file=sys.stderr)
        return 1
    return 0


def _listing() -> typer.Typer:
    app = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP)
    app.callback()(root_options)
    for name, text in COMMANDS:
        app.command(name, help=text)(lambda: None)
    return app


def _light() -> typer.Typer:
    """The commands that need none of the heavy parts (:data:`LIGHT`), alone."""
    from dormant.cli_methods import register

    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                      help=HELP)
    app.callback()(root_options)
    register(app)
    return app


LIGHT = ("methods", "plugins")
"""Commands answered without loading :mod:`dormant.cli` (and torch): they read registries."""


def entry() -> None:
    """``dormant``: the root's help from the table, the :data:`LIGHT` commands alone, anything
    else from :mod:`dormant.cli`."""
    one_line_warnings()
    args = sys.argv[1:]
    command = _command_name(args)
    if command is None and (not args or "--help" in args):
        sys.exit(run(_listing(), args))
    if command in LIGHT:
        sys.exit(run(_light()))
    from dormant.cli import main

    sys.exit(main())
