"""Every number table in the README and docs is rendered from rows committed under results/:
the rendering of each ``dormant:table`` block equals what the file holds, a changed row
changes it, and a table of numbers outside such a block is refused unless it says why."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from dormant.errors import DormantError
from dormant.report.published import BLOCK, publish, read_published, render_text, tables_in

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_NUM = r"[+−-]?\d[\d,]*(\.\d+)?(e[+−-]?\d+)?%?"
NUMBER = re.compile(rf"^\**({_NUM}( ± {_NUM})?|\[{_NUM}, {_NUM}\]|\d+/\d+)\**( \(.*\))?$")
SEPARATOR = re.compile(r"^\|\s*:?-{3,}")
UNRENDERED = "<!-- dormant:unrendered"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_published_table_is_what_its_rows_give(page):
    text = page.read_text("utf-8")
    assert render_text(text, ROOT) == text, (
        f"{page.name} differs from its rows: run `dormant tables {page.relative_to(ROOT)}`")


def test_the_site_publishes_the_relearning_study_and_the_demo_from_rows():
    pages = {"docs/guide/quickstart.md": "results/demo",
             "docs/results/relearning-mnist.md": "results/mnist-confirm"}
    sources = set()
    for page, folder in pages.items():
        found = {m.group("args").split()[1] for m in BLOCK.finditer((ROOT / page).read_text())}
        assert folder in found, f"{page} no longer renders {folder}"
        sources |= found
    for where in sources:
        pub = read_published(ROOT / where)
        assert pub.meta["rows"] == len(pub.rows) > 0 and pub.meta["commit"]
    confirm = read_published(ROOT / "results/mnist-confirm")
    # the published study ran on seeds no choice has seen, under the current protocol
    from dormant.experiments.protocol import PROTOCOL
    assert set(confirm.meta["seeds"]) == set(PROTOCOL.report_seeds)
    assert not set(confirm.meta["seeds"]) & set(PROTOCOL.choice_seeds)
    assert confirm.meta["protocols"] == [PROTOCOL.tag]


def _tables(text: str) -> list[tuple[int, list[list[str]]]]:
    """Markdown tables outside dormant:table blocks: (line of the header, body cells)."""
    inside = BLOCK.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    lines, out, i = inside.split("\n"), [], 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and SEPARATOR.match(lines[i + 1]):
            start, i = i, i + 2
            body = []
            while i < len(lines) and lines[i].startswith("|"):
                body.append([c.strip() for c in lines[i].strip("|").split(" | ")])
                i += 1
            out.append((start, body))
        i += 1
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_table_of_numbers_is_typed(page):
    """A table with three or more measured numbers lives in a dormant:table block; the ones
    whose rows were never committed (older studies) say so on the line above them."""
    lines = page.read_text("utf-8").split("\n")
    for start, body in _tables(page.read_text("utf-8")):
        numbers = sum(bool(NUMBER.match(c)) for row in body for c in row[1:])
        if numbers >= 3:
            above = "\n".join(lines[max(0, start - 3):start])
            assert UNRENDERED in above, (
                f"{page.name}:{start + 1}: a table of {numbers} numbers typed by hand; render "
                "it from committed rows (dormant:table) or mark it dormant:unrendered with why")


@pytest.fixture
def published(tmp_path):
    src = ROOT / "results" / "mnist-confirm"
    dest = tmp_path / "results" / "mnist-confirm"
    shutil.copytree(src, dest)
    return tmp_path


def test_a_changed_row_changes_the_table(published):
    block = ("<!-- dormant:table verdicts results/mnist-confirm k=0 steps=40 -->\n"
             "<!-- /dormant:table -->\n")
    first = render_text(block, published)
    assert tables_in(first) == 1 and "| gradient_ascent |" in first
    rows_path = published / "results/mnist-confirm/rows.jsonl"
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    for r in rows:  # one seed's oracle ends 5 points higher
        if r["method"] == "retrain" and r["seed"] == rows[0]["seed"] and r["k"] == 0:
            r["forget_acc_attacked_end"] += 5.0
    rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    again = render_text(first, published)
    assert again != first and render_text(again, published) == again


def test_bad_blocks_are_one_clear_error(published):
    with pytest.raises(DormantError, match="unknown kind 'nope'"):
        render_text("<!-- dormant:table nope results/mnist-confirm -->\n"
                    "<!-- /dormant:table -->", published)
    with pytest.raises(DormantError, match="not a results folder"):
        render_text("<!-- dormant:table verdicts results/missing -->\n"
                    "<!-- /dormant:table -->", published)
    with pytest.raises(DormantError, match="no column 'bogus'"):
        render_text("<!-- dormant:table verdicts results/mnist-confirm columns=bogus -->\n"
                    "<!-- /dormant:table -->", published)
    for opts, match in (("step=400", "no option 'step'"), ("k=abc", "comma-separated"),
                        ("methods=nope", "no method 'nope'"), ("'k=0", "No closing quotation")):
        with pytest.raises(DormantError, match=match):
            render_text(f"<!-- dormant:table verdicts results/mnist-confirm {opts} -->\n"
                        "<!-- /dormant:table -->", published)
    with pytest.raises(DormantError, match="this kind shows one k"):
        render_text("<!-- dormant:table strengths results/mnist-confirm k=0,5 -->\n"
                    "<!-- /dormant:table -->", published)
    # an unclosed block is refused, never allowed to swallow the prose up to the next close
    text = ("<!-- dormant:table verdicts results/mnist-confirm k=0 -->\nprose to keep\n"
            "<!-- dormant:table verdicts results/mnist-confirm k=5 -->\n"
            "<!-- /dormant:table -->\n")
    with pytest.raises(DormantError, match="not closed"):
        render_text(text, published)
    rows = published / "results/mnist-confirm/rows.jsonl"
    rows.write_text(rows.read_text() + "{not json\n")
    with pytest.raises(DormantError, match="unreadable rows.jsonl"):
        render_text("<!-- dormant:table verdicts results/mnist-confirm -->\n"
                    "<!-- /dormant:table -->", published)


def test_publish_trims_curves_and_records_where_the_rows_came_from(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    row = {"method": "scrub", "seed": 10, "status": "ok", "curve_forget_acc": [1.0] * 200,
           "lmc": {"retain_loss": [0.1]}, "forget_acc_attacked_end": 70.0, "protocol": "v1:x"}
    oracle = {**row, "method": "retrain", "protocol": "v0:old"}  # uses no rule: not counted
    (run / "results.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(oracle) + "\n")
    study = tmp_path / "study.yaml"
    study.write_text("seeds: [10]\n")
    out = publish(run, tmp_path / "results" / "x", "dormant relearn study.yaml", study,
                  commit="abc123")
    pub = read_published(out)
    assert pub.rows[0] == {"method": "scrub", "seed": 10, "status": "ok",
                           "forget_acc_attacked_end": 70.0, "protocol": "v1:x"}
    assert pub.meta["command"] == "dormant relearn study.yaml"
    assert pub.meta["study"] == "seeds: [10]\n" and pub.meta["seeds"] == [10]
    assert pub.meta["protocols"] == ["v1:x"] and "cores" in pub.meta["machine"]
    assert pub.meta["commit"] == "abc123" and pub.meta["tree_clean"] is None
    from dormant.report.published import _source
    assert "abc123;" in _source(pub) and "uncommitted" not in _source(pub)
    with pytest.raises(DormantError, match="no results.jsonl"):
        publish(tmp_path, tmp_path / "y", "x")
