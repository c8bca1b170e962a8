"""The guide's example method really works: one file, one registration, the same call shape."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from dormant.cli import main
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


# --- every command in README.md and docs/*.md: run where cheap, checked otherwise ----------

ROOT = GUIDE.parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"  # as in conftest.py
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = {"methods"}
"""Subcommands run as written (cheap, nothing trained); every other command is checked: its
subcommand exists, each flag is in that subcommand's real ``--help``, every ``configs/`` file
it names exists. ``make`` lines: the target exists in the Makefile."""


def doc_commands() -> list[tuple[str, int, str]]:
    """(file, line, command) for each ``dormant``/``make`` line of every shell code block
    (continuations joined; yaml and python blocks are not commands)."""
    out = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        lang, start = None, 0
        for i, line in enumerate(lines):
            if line.startswith("```"):
                if lang is None:
                    lang, start = line[3:].strip() or "sh", i
                    continue
                lang = None
                continue
            if lang not in ("sh", "bash"):
                continue
            if i > start + 1 and lines[i - 1].rstrip().endswith("\\"):
                continue
            text, j = line, i
            while text.rstrip().endswith("\\"):
                j += 1
                text = text.rstrip()[:-1] + " " + lines[j].strip()
            if text.split()[:1] in (["dormant"], ["make"]):
                out.append((path.name, i + 1, text.strip()))
    return out


COMMANDS = doc_commands()


def _tokens(command: str) -> list[str]:
    """Shell words, comments dropped and ``[optional]`` brackets opened."""
    words = shlex.split(command, comments=True)
    return [w.removeprefix("[").removesuffix("]") for w in words if w not in ("[", "]")]


def _help(sub: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        rc = main([*sub, "--help"])
    return rc, buf.getvalue()


GROUPS = {"store", "ledger", "token"}


def test_every_doc_command_is_found() -> None:
    files = {f for f, _, _ in COMMANDS}
    assert {"README.md", "deletion-requests.md", "scale-out.md"} <= files, files
    assert len(COMMANDS) >= 25, len(COMMANDS)  # the parser did not silently lose blocks


def check_command(where: str, command: str) -> list[str]:
    """Check one doc command against the real CLI; returns its words. Raises AssertionError
    naming the line when the subcommand, a flag or a ``configs/`` file does not exist."""
    words = _tokens(command)
    if words[0] == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M)
        assert all(t in targets for t in words[1:]), f"{where}: {command}"
        return words
    while words[1:2] == ["--plugin"] and len(words) > 3:  # a root option before the command
        words = [words[0], *words[3:]]
    n = 1 if words[1].startswith("-") else 3 if words[1] in GROUPS else 2
    sub = words[1:n]
    rc, text = _help(sub)
    assert rc == 0, f"{where}: `dormant {' '.join(sub)}` is not a command:\n{text}"
    known = set(re.findall(r"--[a-z][a-z0-9-]*", text))
    for w in words[n:]:
        if w.startswith("--"):
            flag = w.split("=", 1)[0]
            assert flag in known, f"{where}: {flag} is not an option of dormant " \
                                  f"{' '.join(sub)}: {command}"
        elif w.startswith("configs/"):
            assert (ROOT / w).is_file(), f"{where}: {w} does not exist"
    return words


def _runs(words: list[str]) -> bool:
    """The commands run as written: help, the method list, and plans with a given step time
    (they train nothing)."""
    return words[0] == "dormant" and ("--help" in words or words[1] == "methods"
                                      or (words[1] == "plan" and "--step-seconds" in words))


@pytest.mark.parametrize("where,command", [(f"{f}:{n}", c) for f, n, c in COMMANDS],
                         ids=[f"{f}:{n}" for f, n, _ in COMMANDS])
def test_doc_command(where: str, command: str, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # no option name is cut in the help's table
    words = check_command(where, command)
    if not _runs(words):
        return
    if "../shared/datasets" in words and not SHARED_DATASETS.is_dir():
        pytest.skip(f"{where} reads {SHARED_DATASETS}, absent here")
    monkeypatch.setenv("DORMANT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)  # the README's commands run from the repository root
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = main(words[1:])
    assert rc == 0, f"{where}: {command}\n{out.getvalue()}"
    assert out.getvalue().strip(), f"{where}: {command} printed nothing"


def test_docs_run_some_commands() -> None:
    ran = [c for _, _, c in COMMANDS if _runs(_tokens(c))]
    assert any("methods" in c for c in ran) and any("plan" in c for c in ran), ran


@pytest.mark.parametrize("command,needle", [
    ("dormant relearn --no-such-flag 1", "--no-such-flag"),
    ("dormant relearn configs/no-such-study.yaml", "no-such-study"),
    ("dormant ledger vrify store", "vrify"),
    ("make no-such-target", "no-such-target"),
])
def test_doc_check_catches_what_is_wrong(command: str, needle: str) -> None:
    with pytest.raises(AssertionError, match=needle):
        check_command("here", command)


def test_readme_says_where_commands_run_and_which_are_checked() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "from the repository root" in text
    assert "tests/test_docs.py" in text
