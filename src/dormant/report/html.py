"""One self-contained HTML page: inline CSS, tables as HTML, figures as base64 data URIs.
Nothing is fetched from elsewhere, so the page can be mailed or archived as one file."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path

from dormant.report.tables import Table, markdown

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #222; }
.scroll { overflow-x: auto; max-width: 100%; margin: 1em 0; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
th { background: #f2f2f2; white-space: normal; vertical-align: bottom; min-width: 3em; }
td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; border: 1px solid #eee; }
code { background: #f4f4f4; padding: 0 3px; }
"""


@dataclass(frozen=True)
class Block:
    """One piece of a report: ``kind`` is "h1", "h2", "h3", "p", "table" or "img"; ``text`` is the
    heading, paragraph (with `code` and *emphasis*) or image caption."""

    kind: str
    text: str = ""
    table: Table | None = None
    path: Path | None = None


def _inline(text: str) -> str:
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", out)


def html_table(table: Table) -> str:
    """The table inside a box that scrolls sideways: a table wider than the page (a study
    with many metrics) scrolls on its own, and the page around it keeps its width."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in table.rows)
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
            "</table></div>")


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def to_html(blocks: list[Block], title: str) -> str:
    parts = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            parts.append(f"<{b.kind}>{_inline(b.text)}</{b.kind}>")
        elif b.kind == "p":
            parts.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "table":
            parts.append(html_table(b.table))
        elif b.kind == "img":
            parts.append(f'<figure><img alt="{html.escape(b.text)}" src="{data_uri(b.path)}">'
                         f"<figcaption>{_inline(b.text)}</figcaption></figure>")
        else:
            raise ValueError(f"unknown block kind {b.kind!r}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def to_markdown(blocks: list[Block]) -> str:
    """The same blocks as markdown; images link to the PNG files beside the report."""
    parts = []
    for b in blocks:
        if b.kind == "h1":
            parts.append(f"# {b.text}")
        elif b.kind == "h2":
            parts.append(f"## {b.text}")
        elif b.kind == "h3":
            parts.append(f"### {b.text}")
        elif b.kind == "p":
            parts.append(b.text)
        elif b.kind == "table":
            parts.append(markdown(b.table))
        elif b.kind == "img":
            parts.append(f"![{b.text}]({Path(b.path).name})")
    return "\n\n".join(parts) + "\n"
