"""The documentation site: the guide's example method really works; the site builds under
``mkdocs build --strict`` with an option table for every command; every command the README
and the site show is checked against the real CLI, and the cheap ones are run as written."""

from __future__ import annotations

import contextlib
import functools
import html
import io
import json
import os
import re
import shlex
import subprocess
import sys
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


# --- every command of the README and the site: run where cheap, checked otherwise ------------

ROOT = GUIDE.parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"  # as in conftest.py
DOCS = [ROOT / "README.md",
        *sorted(p for p in (ROOT / "docs").rglob("*.md") if "hooks" not in p.parts)]
RUN = {"methods", "plugins"}
"""Subcommands run as written (cheap, nothing trained); every other command is checked: its
subcommand exists, each flag is in that subcommand's real ``--help``, every ``configs/`` file
it names exists. ``make`` lines: the target exists in the Makefile. Commands on the embedded
digits data are run too (``test_doc_block_runs``), unless listed in ``NOT_RUN`` (a key ending
in ``$`` is the whole command, any other a prefix)."""

TRAINS = {"relearn", "backdoor", "demo", "train", "unlearn"}
NOT_RUN = {
    "dormant demo$": "three seeds, about a minute of training; tests/test_cli.py runs it "
                     "(demo_out), and the one-seed example runs here",
    "dormant relearn --dataset digits --methods finetune,gradient_ascent,neggrad_plus --k 0,5 "
    "--seeds 0,1,2": "the demo's own study (dormant demo is this command), about a minute; "
                     "tests/test_cli.py runs the demo",
    "dormant relearn --methods forget_margin": "needs the guide's plugin package installed; "
                                               "tests/test_plugins.py installs one and runs a "
                                               "digits study with it",
    "dormant relearn --dataset digits --seeds 0,1,2 --track mlflow": "the demo's study, tracked "
                                                                     "(about a minute); "
                                                                     "tests/test_tracking.py "
                                                                     "tracks a small one",
    "dormant backdoor --dataset digits": "minutes: every seed trains the victim, its twins and "
                                         "the BadNets controls; tests/test_backdoor_study.py "
                                         "runs small ones",
}
"""Digits commands left to the check, each with why: too slow for the docs tests, or run by
another test already."""


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _is_dormant(word: str) -> bool:
    return word == "dormant" or word.endswith("/bin/dormant")


def doc_blocks() -> list[tuple[str, int, list[tuple[int, str]]]]:
    """(file, line, [(line, command)]) for each shell code block of every page holding a
    ``dormant`` or ``make`` line (continuations joined; yaml and python blocks hold none)."""
    out = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        lang, start, block = None, 0, []
        for i, line in enumerate(lines):
            if line.startswith("```"):
                if lang is None:
                    lang, start, block = line[3:].strip() or "sh", i, []
                    continue
                if block:
                    out.append((_name(path), start + 1, block))
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
            first = text.split()[:1]
            if first == ["make"] or (first and _is_dormant(first[0])):
                block.append((i + 1, text.strip()))
    return out


def doc_commands() -> list[tuple[str, int, str]]:
    """(file, line, command) for each ``dormant``/``make`` line of every shell code block."""
    return [(f, n, c) for f, _, block in doc_blocks() for n, c in block]


def inline_commands() -> list[tuple[str, int, str]]:
    """(file, line, command) for each inline code span of prose that starts with ``dormant ``
    and names a subcommand (``dormant COMMAND --help`` and the like are placeholders)."""
    out = []
    for path in DOCS:
        fence = False
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if line.startswith("```"):
                fence = not fence
            if fence:
                continue
            for m in re.finditer(r"(?<!`)`(dormant [^`]+)`(?!`)", line):
                words = m.group(1).split()
                if words[1][:1].islower() or words[1].startswith("-"):
                    out.append((_name(path), i + 1, m.group(1)))
    return out


COMMANDS = doc_commands()
INLINE = inline_commands()


def _tokens(command: str) -> list[str]:
    """Shell words, comments dropped and ``[optional]`` brackets opened."""
    words = shlex.split(command, comments=True)
    words = [w.removeprefix("[").removesuffix("]") for w in words if w not in ("[", "]")]
    return ["dormant", *words[1:]] if words and _is_dormant(words[0]) else words


def _help(sub: list[str]) -> tuple[int, str]:
    return _help_at(tuple(sub), os.environ.get("COLUMNS"))


@functools.cache
def _help_at(sub: tuple[str, ...], columns: str | None) -> tuple[int, str]:
    """One rendering per subcommand and width: some 300 doc commands share 26 of them."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        rc = main([*sub, "--help"])
    return rc, buf.getvalue()


GROUPS = {"store", "ledger", "token"}


def test_every_doc_command_is_found() -> None:
    files = {f for f, _, _ in COMMANDS}
    assert {"README.md", "docs/deletion-requests.md", "docs/scale-out.md",
            "docs/guide/first-study.md", "docs/commands/relearn.md"} <= files, files
    assert len(COMMANDS) >= 60, len(COMMANDS)  # the parser did not silently lose blocks
    assert len(INLINE) >= 40, len(INLINE)


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


def _cheap(words: list[str]) -> bool:
    """The commands run as written in ``test_doc_command``: help, the listings, and plans
    with a given step time (they train nothing)."""
    return words[0] == "dormant" and ("--help" in words or words[1] in RUN
                                      or (words[1] == "plan" and "--step-seconds" in words))


def _on_digits(words: list[str]) -> bool:
    """A command that trains on the embedded digits data (the default dataset)."""
    if words[0] != "dormant" or len(words) < 2 or words[1] not in TRAINS or "--help" in words:
        return False
    dataset = words[words.index("--dataset") + 1] if "--dataset" in words else "digits"
    study = any(w.endswith((".yaml", ".yml")) for w in words)
    return dataset == "digits" and not study


def _not_run(command: str) -> str | None:
    text = " ".join(shlex.split(command, comments=True))
    return next((why for key, why in NOT_RUN.items()
                 if (text == key[:-1] if key.endswith("$") else text.startswith(key))), None)


@pytest.mark.parametrize("where,command", [(f"{f}:{n}", c) for f, n, c in COMMANDS],
                         ids=[f"{f}:{n}" for f, n, _ in COMMANDS])
def test_doc_command(where: str, command: str, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # no option name is cut in the help's table
    words = check_command(where, command)
    if not _cheap(words):
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


@pytest.mark.parametrize("where,command", [(f"{f}:{n}", c) for f, n, c in INLINE],
                         ids=[f"{f}:{n}" for f, n, _ in INLINE])
def test_inline_command(where: str, command: str, monkeypatch) -> None:
    """A command named in prose is checked like one in a code block: placeholders in capitals
    (``NAME``, ``DIR``) stand for values, ``a|b`` for alternatives."""
    monkeypatch.setenv("COLUMNS", "250")
    for alternative in _alternatives(command):
        check_command(where, alternative)


def _alternatives(command: str) -> list[str]:
    # a rendered table's provenance may end with a note on the run: "(the 20 sisa cells ...)"
    words = re.sub(r"\s\(.*\)$", "", command).replace("...", "").split()
    if len(words) > 1 and "|" in words[1]:
        return [" ".join([words[0], w, *words[2:]]) for w in words[1].split("|")]
    if len(words) > 2 and words[1] in GROUPS and "|" in words[2]:
        return [" ".join([*words[:2], w, *words[3:]]) for w in words[2].split("|")]
    return [" ".join(words)]


def test_every_python_example_compiles() -> None:
    """The site's Python blocks are code a reader pastes: each must at least be valid Python
    (the guide's method runs in ``test_guide_example_registers_and_unlearns``)."""
    blocks = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
            line = text[:m.start()].count("\n") + 2
            blocks.append((f"{path.relative_to(ROOT)}:{line}", m.group(1)))
    assert len(blocks) >= 4, blocks
    for where, code in blocks:
        compile(code, where, "exec")


def test_docs_run_some_commands() -> None:
    ran = [c for _, _, c in COMMANDS if _cheap(_tokens(c))]
    assert any("methods" in c for c in ran) and any("plan" in c for c in ran), ran
    assert any(_on_digits(_tokens(c)) and not _not_run(c) for _, _, c in COMMANDS)


def test_every_not_run_entry_is_still_shown() -> None:
    """An exemption whose command left the docs would excuse nothing: it goes too."""
    for prefix in NOT_RUN:
        assert any(_not_run(c) == NOT_RUN[prefix] for _, _, c in COMMANDS), prefix


@pytest.mark.parametrize("command,needle", [
    ("dormant relearn --no-such-flag 1", "--no-such-flag"),
    ("dormant relearn configs/no-such-study.yaml", "no-such-study"),
    ("dormant ledger vrify store", "vrify"),
    ("make no-such-target", "no-such-target"),
    (".venv/bin/dormant plan --no-such-flag", "--no-such-flag"),
])
def test_doc_check_catches_what_is_wrong(command: str, needle: str) -> None:
    with pytest.raises(AssertionError, match=needle):
        check_command("here", command)


# --- digits examples: run in order with the rest of their block, in a temporary folder -------

RUN_BLOCKS = [(f, n, block) for f, n, block in doc_blocks()
              if any(_on_digits(_tokens(c)) and not _not_run(c) for _, c in block)]


def _check_outputs(words: list[str], where: str) -> None:
    """What a digits command must have written: a study's rows, every one ok, with its
    report; a checkpoint for train and unlearn."""
    if "--out" not in words:
        return
    out = Path(words[words.index("--out") + 1])
    if words[1] in ("relearn", "backdoor", "demo"):
        rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        assert rows and all(r["status"] == "ok" for r in rows), f"{where}: {rows}"
        assert (out / "report.md").is_file() and (out / "report.html").is_file(), where
    elif words[1] == "train":
        assert (out / "model.safetensors").is_file(), where
    elif words[1] == "unlearn":
        assert (out / "unlearned.safetensors").is_file(), where


@pytest.mark.slow
@pytest.mark.parametrize("where,block", [(f"{f}:{n}", b) for f, n, b in RUN_BLOCKS],
                         ids=[f"{f}:{n}" for f, n, _ in RUN_BLOCKS])
def test_doc_block_runs(where: str, block, monkeypatch, tmp_path, tmp_path_factory) -> None:
    """Every digits example that takes seconds is run as written, after the block's earlier
    commands (a checkpoint its unlearn reads), in a temporary folder holding ``configs``."""
    # the session's shared cache (as in test_cli.py): digits is decoded once
    monkeypatch.setenv("DORMANT_CACHE", str(tmp_path_factory.getbasetemp() / "dormant-cache"))
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    for line, command in block:
        words = _tokens(command)
        if not (_cheap(words) or _on_digits(words)) or _not_run(command):
            continue  # checked by test_doc_command: it takes minutes or other data
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            rc = main(words[1:])
        assert rc == 0, f"{where} (line {line}): {command}\n{out.getvalue()}"
        _check_outputs(words, f"{where} (line {line})")


def test_readme_says_where_commands_run_and_which_are_checked() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "from the repository root" in text
    assert "tests/test_docs.py" in text


# --- the README: the pitch, the two quick-start commands, a picture, links into the site ------


def test_readme_is_short_and_points_into_the_site() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    quick = text[text.index("## Quick start"):]
    quick = quick[:quick.index("\n## ", 1)]
    assert [c for c in re.findall(r"```\w*\n(.*?)```", quick, re.S)] == ["make demo\nmake test\n"]
    # after `make demo`, dormant is in .venv only: the README says how to reach it
    assert ".venv/bin/dormant" in text and "source .venv/bin/activate" in text
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(pictures) == 1 and (ROOT / pictures[0]).is_file(), pictures
    links = re.findall(r"\]\((docs/[^)#]+)", text)
    assert len(set(links)) >= 15 and all((ROOT / link).is_file() for link in links), links


# --- the site: mkdocs build --strict, one page per command, the API reference -----------------


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built as CI builds it; strict, so a broken link or any warning fails."""
    out = tmp_path_factory.mktemp("site")
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d",
                          str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert res.returncode == 0, f"mkdocs build --strict failed:\n{res.stdout}\n{res.stderr}"
    return out


def _cli_hook():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cli_options",
                                                  ROOT / "docs" / "hooks" / "cli_options.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _marked() -> dict[tuple[str, ...], Path]:
    found = {}
    for page in sorted((ROOT / "docs" / "commands").glob("*.md")):
        for m in re.finditer(r"<!-- dormant:cli ([a-z][a-z -]*?) -->", page.read_text()):
            found[tuple(m.group(1).split())] = page
    return found


def test_every_command_has_a_page_with_its_option_table() -> None:
    hook, marked = _cli_hook(), _marked()
    commands = hook.commands()
    assert len(commands) >= 20 and set(commands) == set(marked), (
        set(commands) ^ set(marked))
    for path, page in marked.items():
        group = path[0]
        assert page.stem == group, f"dormant {' '.join(path)} is marked on {page.name}"
        assert f"commands/{group}.md" in (ROOT / "mkdocs.yml").read_text()


@pytest.mark.slow
def test_the_site_builds_strict_with_every_option_shown(site: Path) -> None:
    hook, marked = _cli_hook(), _marked()
    for path, page in marked.items():
        built = html.unescape((site / "commands" / page.stem / "index.html").read_text())
        for p in hook.find(list(path)).params:
            for opt in [o for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]:
                assert f"<code>{opt}</code>" in built, f"{page.name}: {opt} not shown"
    # the README's picture and the science pages made it into the site
    assert (site / "img" / "membership-digits.png").is_file()
    assert (site / "verdicts" / "index.html").is_file()


@pytest.mark.slow
def test_the_api_reference_covers_every_package(site: Path) -> None:
    """One page per package, each rendering the package's public names from its docstrings,
    also where the package loads them lazily (docs/hooks/api_pages.py)."""
    packages = sorted(p.parent.name for p in (ROOT / "src" / "dormant").glob("*/__init__.py"))
    for name in packages:
        page = site / "api" / name / "index.html"
        assert page.is_file(), f"dormant.{name} has no API page (docs/api/{name}.md)"
        # a member, not only the package's docstring (a lazy package lists its submodules)
        assert f'id="dormant.{name}.' in page.read_text(), f"dormant.{name} shows no names"


# --- study files shown on the site: valid studies, every key a real one ----------------------


def _study_blocks() -> list[tuple[str, str]]:
    return [(_name(path), block) for path in DOCS
            for block in re.findall(r"```yaml\n(.*?)```", path.read_text(encoding="utf-8"), re.S)
            if block.startswith("dataset:")]


def test_every_study_file_shown_is_a_valid_study(tmp_path) -> None:
    from dormant.cli_common import load_spec
    from dormant.errors import DormantError
    from dormant.experiments.spec import RelearnSpec

    blocks = _study_blocks()
    assert any(page == "docs/guide/study-files.md" for page, _ in blocks), blocks
    for i, (page, block) in enumerate(blocks):
        study = tmp_path / f"{i}.yaml"
        study.write_text(block)
        spec = load_spec(RelearnSpec, study)
        assert spec.dataset == re.match(r"dataset: (\S+)", block).group(1), page
        broken = tmp_path / f"{i}-broken.yaml"  # the check has teeth
        broken.write_text(block + "sedes: [0]\n")
        with pytest.raises(DormantError, match="sedes"):
            load_spec(RelearnSpec, broken)
