"""The request engine's shape (issue 21): no import circle in ``dormant.requests``, lazy
imports included, and no stage that asks which method it runs; a new kind of deletion is one
deleter registered from outside the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dormant.requests
from dormant.unlearn import available_methods

PACKAGE = Path(dormant.requests.__file__).parent
STAGES = ("plan", "forget", "assess", "checks", "policy", "record", "report", "audit")
"""The modules of the pipeline plan -> unlearn -> check -> judge -> record (the deleters are
where a kind of deletion is allowed to know itself)."""


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every module of ``modules`` that ``path`` imports, at the top or inside a function
    (``if TYPE_CHECKING`` blocks, which never run, aside)."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _type_checking(node)
            for n in ast.walk(node)}
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n for n in names if n in modules and n != here}
    return out


def _graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(p) for p in files}
    return {_module_name(p): _imports(p, modules) for p in files}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_requests_has_no_import_circle():
    graph = _graph()
    assert len(graph) >= 15  # the walk found the package, deleters included
    # the package's own __init__ gathers the public names; a module importing its own
    # package is importing that __init__, so the edges into it are counted too
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle():
    """A positive control: the test above would see a circle if there were one."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    graph = _graph()
    graph["dormant.requests.ledger"].add("dormant.requests.store")  # store imports ledger
    assert _cycle(graph) is not None


def _method_names_compared(path: Path, names: set[str]) -> list[str]:
    """String constants naming a method that a comparison or membership test uses."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        for operand in (node.left, *node.comparators):
            consts = [operand] if isinstance(operand, ast.Constant) else (
                list(operand.elts) if isinstance(operand, ast.Tuple | ast.List | ast.Set)
                else [])
            found += [f"{path.name}:{node.lineno} {c.value!r}" for c in consts
                      if isinstance(c, ast.Constant) and c.value in names]
    return found


def test_no_stage_tests_a_methods_name():
    names = set(available_methods())
    assert {"retrain", "sisa", "gradient_ascent"} <= names
    offenders = [hit for stage in STAGES
                 for hit in _method_names_compared(PACKAGE / f"{stage}.py", names)]
    assert offenders == []
    # the check itself sees the habit it forbids
    tmp = Path(__file__).with_name("_probe_stage.py")
    try:
        tmp.write_text("def f(method):\n    return method == 'sisa' or method in ('retrain',)\n")
        assert len(_method_names_compared(tmp, names)) == 2
    finally:
        tmp.unlink()


def test_a_deleter_registered_from_outside_runs_its_own_method(digits, tmp_path):
    """One file plus one registration: a deleter for a new method claims it, and the request
    engine runs it without a line of its own changing."""
    import torch

    from dormant.cli import main
    from dormant.requests import ModelStore, Policy, Request, process_request, register_deleter
    from dormant.requests.deleters import Deleter, Made, choose
    from dormant.requests.deleters.base import _DELETERS
    from dormant.unlearn import unlearn

    class Halve(Deleter):
        name = "halve-test"
        methods = ("finetune",)
        catch_all = False

        def run(self, job):
            new = unlearn("finetune", job.model, job.data, job.ctx, steps=2)
            with torch.no_grad():
                for p in new.parameters():
                    p.mul_(0.5)
            return Made(new, 0.0, None, lambda *_: ([], {"halved": True}))

    assert main(["train", "--dataset", "digits", "--out", str(tmp_path / "t"), "--store",
                 str(tmp_path / "s"), "--name", "d", "--device", "cpu"]) == 0
    store = ModelStore(tmp_path / "s")
    register_deleter(Halve())
    try:
        assert choose("finetune", {}, store.resolve("d"))[0].name == "halve-test"
        policy = Policy.model_validate({"budget": {
            "relearn_steps": 5, "leaked_k": 0, "defender_images": 20, "mia_size": 50,
            "nc": {"epochs": 1, "batch_size": 10}, "uap": {"steps": 2}}})
        rec, _ = process_request(store, digits, Request(
            "d", torch.arange(40, 70), "alice", "test", method="finetune"), policy,
            device="cpu")
        assert rec["halved"] is True and rec["method"] == "finetune"
        assert rec["oracle"].startswith("a retrain")  # not exact: a retrain is its oracle
    finally:
        _DELETERS.pop("halve-test")
    assert choose("finetune", {}, store.resolve("d"))[0].name == "approximate"
    with pytest.raises(ValueError, match="SISA version"):
        choose("sisa", {}, store.resolve("d"))
