"""The ledger's defining property: every kind of tampering is caught at the right row."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dormant.errors import DormantError
from dormant.requests import ledger as ledger_module
from dormant.requests.ledger import GENESIS, Ledger, canonical_json, row_hash

COLS = "ts, kind, request_id, model, payload, prev_hash, hash"


def _five(path: Path, files: dict[int, list[dict]] | None = None) -> Ledger:
    ledger = Ledger(path)
    kinds = ["model-added", "request-started", "request-finished", "request-started",
             "request-finished"]
    for i, kind in enumerate(kinds, start=1):
        payload = {"i": i, "acc": 97.5 + i, "ids": [i, i + 1]}
        if files and i in files:
            payload["files"] = files[i]
        ledger.append(kind, payload, request_id=None if i == 1 else f"r{i // 2}",
                      model="digits")
    return ledger


def _raw(path: Path) -> sqlite3.Connection:
    """What someone with the sqlite3 CLI does first: drop the append-only triggers."""
    con = sqlite3.connect(path, isolation_level=None)
    for name in ("entries_no_update", "entries_no_delete"):
        con.execute(f"DROP TRIGGER {name}")
    return con


def _row(con: sqlite3.Connection, seq: int) -> tuple:
    return con.execute(f"SELECT {COLS} FROM entries WHERE seq = ?", (seq,)).fetchone()


def test_a_fresh_chain_verifies_and_links(tmp_path):
    ledger = _five(tmp_path / "ledger.sqlite")
    rows = ledger.entries()
    assert [e.seq for e in rows] == [1, 2, 3, 4, 5] and len(ledger) == 5
    assert rows[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(rows, rows[1:], strict=False))
    for e in rows:
        assert e.hash == row_hash(e.seq, e.ts, e.kind, e.request_id, e.model, e.payload,
                                  e.prev_hash)
    assert rows[2].payload == {"i": 3, "acc": 100.5, "ids": [3, 4]}
    assert rows[0].ts.endswith("+00:00")
    assert [e.seq for e in ledger.entries(kind="request-finished")] == [3, 5]
    assert [e.seq for e in ledger.entries(request_id="r2", kind="request-started")] == [4]
    report = ledger.verify()
    assert (report.ok, report.rows, report.bad_seq, report.problem) == (True, 5, None, "")
    assert report.head == rows[-1].hash == ledger.head()
    ledger.close()
    again = Ledger(tmp_path / "ledger.sqlite", create=False)
    assert again.head() == rows[-1].hash and again.verify(expect_head=rows[-1].hash).ok


def test_an_edited_field_is_caught_at_that_row(tmp_path):
    path = tmp_path / "ledger.sqlite"
    _five(path).close()
    con = _raw(path)
    con.execute("UPDATE entries SET payload = ? WHERE seq = 3",
                (canonical_json({"i": 3, "acc": 10.0, "ids": [3, 4]}),))
    report = Ledger(path).verify()
    assert not report.ok and report.bad_seq == 3
    assert report.problem.startswith("row 3 (request-finished at ")
    assert "does not match its hash" in report.problem and "edited" in report.problem


def test_a_reformatted_payload_with_the_same_meaning_is_an_edit(tmp_path):
    path = tmp_path / "ledger.sqlite"
    _five(path).close()
    con = _raw(path)
    text = _row(con, 2)[4]
    con.execute("UPDATE entries SET payload = ? WHERE seq = 2",
                (json.dumps(json.loads(text), indent=1),))
    report = Ledger(path).verify()
    assert report.bad_seq == 2 and "edited" in report.problem


def test_an_edited_and_rehashed_row_is_caught_at_the_next(tmp_path):
    path = tmp_path / "ledger.sqlite"
    _five(path).close()
    con = _raw(path)
    ts, kind, rid, model, _, prev, _ = _row(con, 3)
    payload = {"i": 3, "acc": 10.0, "ids": [3, 4]}
    digest = row_hash(3, ts, kind, rid, model, payload, prev)
    con.execute("UPDATE entries SET payload = ?, hash = ? WHERE seq = 3",
                (canonical_json(payload), digest))
    report = Ledger(path).verify()
    assert not report.ok and report.bad_seq == 4
    assert report.problem == ("row 4: prev_hash does not match row 3's hash; rows were "
                              "reordered, removed or rewritten")


def test_a_deleted_row_is_named(tmp_path):
    path = tmp_path / "ledger.sqlite"
    _five(path).close()
    _raw(path).execute("DELETE FROM entries WHERE seq = 3")
    report = Ledger(path).verify()
    assert not report.ok and report.bad_seq == 3 and report.rows == 4
    assert report.problem == "row 3 is missing: row 4 follows row 2; a row was deleted"


def test_deleted_first_and_consecutive_rows_are_named(tmp_path):
    path = tmp_path / "ledger.sqlite"
    _five(path).close()
    con = _raw(path)
    con.execute("DELETE FROM entries WHERE seq IN (3, 4)")
    report = Ledger(path).verify()
    assert report.bad_seq == 3
    assert report.problem == "rows 3-4 are missing: row 5 follows row 2; rows were deleted"
    con.execute("DELETE FROM entries WHERE seq = 1")
    report = Ledger(path).verify()
    assert report.bad_seq == 1 and "the ledger starts at row 2" in report.problem


def test_two_swapped_rows_are_caught_at_the_first(tmp_path):
    path = tmp_path / "ledger.sqlite"
    _five(path).close()
    con = _raw(path)
    two, four = _row(con, 2), _row(con, 4)
    sql = ("UPDATE entries SET ts = ?, kind = ?, request_id = ?, model = ?, payload = ?, "
           "prev_hash = ?, hash = ? WHERE seq = ?")
    con.execute(sql, (*four, 2))
    con.execute(sql, (*two, 4))
    report = Ledger(path).verify()
    assert not report.ok and report.bad_seq == 2
    assert "holds the content of row 4" in report.problem and "swapped" in report.problem


def test_truncation_is_caught_only_against_the_kept_head(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger = _five(path)
    old_head, row2 = ledger.head(), ledger.entries()[1].hash
    ledger.close()
    _raw(path).execute("DELETE FROM entries WHERE seq > 3")
    ledger = Ledger(path)
    plain = ledger.verify()
    assert plain.ok and plain.rows == 3
    assert "entries_no_update" in plain.note  # the dropped triggers are reported
    cut = ledger.verify(expect_head=old_head)
    assert not cut.ok and cut.bad_seq == 4
    assert cut.problem.startswith(f"head {old_head[:12]} is not in the ledger (it ends at row 3")
    assert "truncated" in cut.problem
    grown = ledger.verify(expect_head=row2)
    assert grown.ok and grown.bad_seq is None and "1 row came after it" in grown.note
    with pytest.raises(DormantError, match="64 hex"):
        ledger.verify(expect_head=old_head[:12])


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_a_replaced_checkpoint_is_caught_at_the_row_that_names_it(tmp_path):
    store = tmp_path / "store"
    (store / "models").mkdir(parents=True)
    a = _write(store / "models" / "a.safetensors", b"a" * 3_000_000)  # > one 1 MiB chunk
    b = _write(store / "models" / "b.safetensors", b"b" * 100)
    files = {1: [{"path": "models/a.safetensors", "sha256": a, "role": "original"}],
             3: [{"path": "models/a.safetensors", "sha256": a, "role": "original"},
                 {"path": "models/b.safetensors", "sha256": b, "role": "unlearned"}]}
    ledger = _five(tmp_path / "ledger.sqlite", files)
    good = ledger.verify(store=store)
    assert good.ok and good.files_checked == 2
    (store / "models" / "b.safetensors").write_bytes(b"c" * 100)
    bad = ledger.verify(store=store)
    assert not bad.ok and bad.bad_seq == 3
    assert bad.problem == (f"row 3: models/b.safetensors has sha256 "
                           f"{hashlib.sha256(b'c' * 100).hexdigest()[:12]} but the ledger "
                           f"recorded {b[:12]}; the checkpoint was replaced")
    assert ledger.verify().ok  # without a store only the chain is walked
    (store / "models" / "a.safetensors").unlink()
    gone = ledger.verify(store=store)
    assert gone.bad_seq == 1 and "missing" in gone.problem


def test_one_file_named_by_two_rows_must_match_both(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    a = _write(store / "a.bin", b"xyz")
    files = {2: [{"path": "a.bin", "sha256": a, "role": "original"}],
             4: [{"path": "a.bin", "sha256": "f" * 64, "role": "original"}]}
    report = _five(tmp_path / "ledger.sqlite", files).verify(store=store)
    assert report.bad_seq == 4 and report.files_checked == 1 and "replaced" in report.problem


def test_triggers_refuse_plain_update_and_delete(tmp_path):
    path = tmp_path / "ledger.sqlite"
    head = _five(path).head()
    con = sqlite3.connect(path, isolation_level=None)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("UPDATE entries SET payload = '{}' WHERE seq = 2")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("DELETE FROM entries WHERE seq = 5")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("UPDATE meta SET value = 'x'")
    report = Ledger(path).verify(expect_head=head)
    assert report.ok and report.rows == 5 and report.note == ""


def test_files_that_are_not_ledgers_are_refused_in_one_line(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a database\n" * 10)
    with pytest.raises(DormantError, match="is not a dormant ledger") as err:
        Ledger(text)
    assert "\n" not in str(err.value) and "not an SQLite file" in str(err.value)
    assert text.read_text() == "hello, this is not a database\n" * 10  # left untouched
    foreign = tmp_path / "other.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE people (name TEXT)")
    con.commit()
    con.close()
    with pytest.raises(DormantError, match="without the ledger tables"):
        Ledger(foreign)
    with pytest.raises(DormantError, match="no ledger at"):
        Ledger(tmp_path / "missing.sqlite", create=False)
    assert not (tmp_path / "missing.sqlite").exists()
    with pytest.raises(DormantError, match="is a directory"):
        Ledger(tmp_path)


def test_transaction_rolls_back_everything_inside_it(tmp_path):
    ledger = _five(tmp_path / "ledger.sqlite")
    head = ledger.head()
    with pytest.raises(RuntimeError), ledger.transaction():
        ledger.append("request-started", {"n": len(ledger)})
        with ledger.transaction():  # nested use joins the outer transaction
            ledger.append("request-finished", {})
        assert len(ledger) == 7
        raise RuntimeError("crash between the two appends")
    assert len(ledger) == 5 and ledger.head() == head
    with ledger.transaction():
        e = ledger.append("request-started", {"n": len(ledger)})
    assert e.seq == 6 and e.payload == {"n": 5} and ledger.verify().ok


def test_export_json_and_csv_carry_every_row(tmp_path):
    ledger = _five(tmp_path / "ledger.sqlite")
    rows = json.loads(ledger.export("json"))
    assert rows == [e.to_dict() for e in ledger.entries()]
    table = list(csv.DictReader(io.StringIO(ledger.export("csv"))))
    assert [int(r["seq"]) for r in table] == [1, 2, 3, 4, 5]
    assert json.loads(table[2]["payload"]) == {"i": 3, "acc": 100.5, "ids": [3, 4]}
    assert table[4]["hash"] == ledger.head() and table[0]["prev_hash"] == GENESIS
    with pytest.raises(DormantError, match="unknown export format 'xml'"):
        ledger.export("xml")


# The writer loads ledger.py alone: dormant.requests' __init__ pulls in torch, which the ledger
# must not need (and which would cost each writer seconds).
_WRITER = """
import importlib.util, sys, time
from pathlib import Path
source, path, me = sys.argv[1:4]
ready, go = Path(sys.argv[4]), Path(sys.argv[5])
spec = importlib.util.spec_from_file_location("ledger_alone", source)
sys.modules["ledger_alone"] = module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
assert "torch" not in sys.modules
ledger = module.Ledger(Path(path))
ready.touch()
while not go.exists():
    time.sleep(0.001)
for i in range(30):
    time.sleep(0.002)  # outside the lock, so the other writer gets its turns
    if i % 2:
        ledger.append("tick", {"who": me, "i": i}, request_id=me)
    else:  # read-then-append under one lock: the count read must be the row's seq - 1
        with ledger.transaction():
            ledger.append("tick", {"who": me, "i": i, "before": len(ledger)}, request_id=me)
"""


def test_two_processes_appending_at_once_serialise(tmp_path):
    path = tmp_path / "ledger.sqlite"
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, ledger_module.__file__, str(path),
                               who, str(tmp_path / f"ready-{who}"), str(go)])
             for who in ("a", "b")]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{w}").exists() for w in "ab"):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    go.touch()  # both are past their imports: the appends really overlap
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    ledger = Ledger(path, create=False)
    rows = ledger.entries()
    assert [e.seq for e in rows] == list(range(1, 61))
    assert ledger.verify().ok
    order = [e.payload["who"] for e in rows]
    assert sum(a != b for a, b in zip(order, order[1:], strict=False)) >= 2  # they overlapped
    for who in "ab":
        assert sorted(e.payload["i"] for e in rows if e.payload["who"] == who) == list(range(30))
    assert all(e.payload["before"] == e.seq - 1 for e in rows if "before" in e.payload)
