"""``dormant --help``, ``dormant COMMAND --help`` and ``dormant methods`` start without torch:
the root lists the commands from a table (``dormant.cli_root.COMMANDS``) that must be the full
command line's, word for word; the registries and settings models hold classes whose code
loads torch only when it runs."""

from __future__ import annotations

import subprocess
import sys

import typer

from dormant.cli_root import COMMANDS, HELP

ROOT_HELP = """\
import sys
sys.argv = ["dormant", *{args!r}]
from dormant import cli_root
try:
    cli_root.entry()
except SystemExit as e:
    assert e.code in (0, None), e.code
print("torch imported:", "torch" in sys.modules, file=sys.stderr)
"""


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ROOT_HELP.format(args=list(args))],
                          capture_output=True, text=True, env={"COLUMNS": "100",
                                                              "PATH": "/usr/bin:/bin"})


def test_root_help_imports_no_torch_and_lists_every_command():
    for args in ([], ["--help"], ["--debug", "--help"], ["--plugin", "x.y", "--help"]):
        r = _run(*args)
        assert r.returncode == 0, r.stderr
        assert r.stderr.strip().splitlines()[-1] == "torch imported: False", (args, r.stderr)
        listed = [line.split()[1] for line in r.stdout.splitlines()
                  if line.startswith("│ ") and line.split()[1] in dict(COMMANDS)]
        assert listed == [name for name, _ in COMMANDS]


def test_methods_and_plugins_import_no_torch_and_match_the_full_command_line():
    out = {}
    for args in (["methods"], ["methods", "--preset", "backdoor"], ["plugins"]):
        r = _run(*args)
        assert r.returncode == 0, r.stderr
        assert r.stderr.strip().splitlines()[-1] == "torch imported: False", (args, r.stderr)
        out[args[-1]] = r.stdout
    assert "gradient_ascent" in out["methods"] and "no plugins" in out["plugins"]
    # the full command line prints the same table
    full = subprocess.run([sys.executable, "-c", "from dormant.cli import main; "
                           "raise SystemExit(main(['methods']))"], capture_output=True,
                          text=True, env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"})
    assert full.returncode == 0 and full.stdout == out["methods"]


def test_every_command_help_imports_no_torch():
    """A command's help builds its flags from the settings models, which hold no torch."""
    from dormant.cli_root import COMMANDS

    groups = {"store", "ledger", "token"}
    for name, _ in COMMANDS:
        if name in groups:
            continue
        r = _run(name, "--help")
        assert r.returncode == 0 and "--help" in r.stdout, (name, r.stderr)
        assert r.stderr.strip().splitlines()[-1] == "torch imported: False", (name, r.stderr)
    for args in (["store", "add", "--help"], ["ledger", "verify", "--help"]):
        r = _run(*args)
        assert r.stderr.strip().splitlines()[-1] == "torch imported: False", (args, r.stderr)


def test_the_table_is_the_full_command_lines():
    from dormant.cli import app

    group = typer.main.get_command(app)
    assert group.help == HELP
    assert [(name, cmd.help) for name, cmd in group.commands.items()] == list(COMMANDS), (
        "dormant.cli_root.COMMANDS is stale; set it to:\n" + "\n".join(
            f"    ({name!r}, {cmd.help!r})," for name, cmd in group.commands.items()))


def _outcome(call, capsys) -> tuple[int, str, str]:
    try:
        rc = call()
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 0
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_the_entry_point_answers_as_the_full_command_line(monkeypatch, capsys):
    """Same output and exit code, whichever path answers: the root's help, its usage errors,
    the light commands and their errors."""
    from dormant import cli_root
    from dormant.cli import main

    monkeypatch.setenv("COLUMNS", "100")
    for args in ([], ["--help"], ["--debug", "--help"], ["--plugin"], ["--plugin", "x.py"],
                 ["--no-such"], ["methods", "--n-train", "0"], ["methods", "--no-such"],
                 ["plugins", "--help"]):
        monkeypatch.setattr(sys, "argv", ["dormant", *args])
        fast = _outcome(cli_root.entry, capsys)
        assert fast == _outcome(lambda a=args: main(a), capsys), args
        assert fast[0] in (0, 2) and (fast[0] == 0) == (not fast[2]), (args, fast)
