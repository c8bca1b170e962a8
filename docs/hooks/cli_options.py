"""MkDocs hook: ``<!-- dormant:cli COMMAND -->`` in a page becomes the usage line and the
option table of ``dormant COMMAND``, read from the CLI's own parameters at build time, so a
command page can neither list a flag the CLI lacks nor miss one it has."""

from __future__ import annotations

import re

MARK = re.compile(r"<!-- dormant:cli ([a-z][a-z -]*?) -->")


def cli_tree():
    """The click command tree behind ``dormant`` (typer's, or the copy of click it carries)."""
    import typer.main

    from dormant.cli import app

    return typer.main.get_command(app)


def find(path: list[str]):
    cmd = cli_tree()
    for i, name in enumerate(path):
        sub = getattr(cmd, "commands", {})
        if name not in sub:
            known = ", ".join(sorted(sub)) or "none"
            raise KeyError(f"`dormant {' '.join(path[:i + 1])}` is not a command "
                           f"(subcommands there: {known})")
        cmd = sub[name]
    return cmd


def commands(cmd=None, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf command's path, e.g. ``("ledger", "verify")``."""
    cmd = cmd if cmd is not None else cli_tree()
    subs = getattr(cmd, "commands", None)
    if not subs:
        return [path]
    return [p for name, sub in subs.items() for p in commands(sub, (*path, name))]


def _cell(text: object) -> str:
    text = " ".join(str(text).split())
    return text.replace("|", "\\|").replace("<", "&lt;")


def _default(p) -> str:
    shown = getattr(p, "show_default", None)
    if isinstance(shown, str):
        return shown
    if shown and p.default not in (None, "", ()):
        return str(p.default)
    return ""


def _usage(p) -> str:
    name = p.name.upper() + ("..." if getattr(p, "nargs", 1) == -1 else "")
    return name if p.required else f"[{name}]"


def options_markdown(path: list[str]) -> str:
    """The usage line and a table of the arguments and options of ``dormant PATH``."""
    cmd = find(path)
    args = [p for p in cmd.params if not getattr(p, "opts", ["-"])[0].startswith("-")]
    opts = [p for p in cmd.params if p not in args and not getattr(p, "hidden", False)]
    usage = " ".join(_usage(p) for p in args)
    lines = [f"`{' '.join(['dormant', *path, '[OPTIONS]', usage]).strip()}`",
             "", "| argument or option | default | meaning |", "|---|---|---|"]
    for p in args:
        lines.append(f"| `{p.name.upper()}` | | {_cell(getattr(p, 'help', '') or '')} |")
    for p in opts:
        names = " / ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
        required = " (required)" if p.required else ""
        lines.append(f"| {names}{required} | {_cell(_default(p))} | "
                     f"{_cell(getattr(p, 'help', '') or '')} |")
    lines.append("| `--debug` | | on bad input, raise with the full traceback instead of one "
                 "error line (anywhere on the line) |")
    return "\n".join(lines)


def on_page_markdown(markdown, page, config, files, **kwargs):
    from mkdocs.exceptions import PluginError

    def table(m: re.Match) -> str:
        try:
            return options_markdown(m.group(1).split())
        except KeyError as e:
            raise PluginError(f"{page.file.src_path}: {e.args[0]}") from None

    return MARK.sub(table, markdown)
