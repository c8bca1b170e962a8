"""MkDocs hook: ``<!-- dormant:api PACKAGE -->`` in an API page becomes mkdocstrings' block
for the package, plus one block per submodule when the package shows no names of its own:
it loads them lazily (a module ``__getattr__``, PEP 562), which static analysis cannot
follow, or it imports none (its submodules are the API)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

MARK = re.compile(r"<!-- dormant:api (dormant(?:\.\w+)*) -->")
SRC = Path(__file__).resolve().parents[2] / "src"


def _hidden(init: Path) -> bool:
    body = ast.parse(init.read_text(encoding="utf-8")).body
    lazy = any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in body)
    return lazy or not any(isinstance(n, ast.ImportFrom) for n in body)


def blocks(package: str) -> str:
    folder = SRC / package.replace(".", "/")
    out = [f"::: {package}"]
    if (folder / "__init__.py").is_file() and _hidden(folder / "__init__.py"):
        subs = sorted(p.stem if p.is_file() else p.name for p in folder.iterdir()
                      if not p.name.startswith("_")
                      and (p.suffix == ".py" or (p / "__init__.py").is_file()))
        for sub in subs:
            out += ["", f"## `{package}.{sub}`", "", f"::: {package}.{sub}",
                    "    options:", "      show_root_heading: false"]
    return "\n".join(out)


def on_page_markdown(markdown, page, config, files, **kwargs):
    return MARK.sub(lambda m: blocks(m.group(1)), markdown)
