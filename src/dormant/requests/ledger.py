"""The deletion-request ledger: an append-only, hash-chained SQLite file.

Each row's ``hash`` is the sha256 of the canonical JSON of its content plus the previous row's
hash, so an edit, deletion, reordering or rewrite shows up when ``verify`` re-walks the chain;
triggers refuse UPDATE and DELETE for anyone using the normal path. Truncating the tail keeps a
valid chain, which is why the operator keeps the head hash elsewhere (``expect_head``).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from dormant.errors import DormantError

FORMAT = "dormant-ledger/1"
GENESIS = "0" * 64
BUSY_TIMEOUT_S = 60.0
COLUMNS = ("seq", "ts", "kind", "request_id", "model", "payload", "prev_hash", "hash")
TRIGGERS = ("entries_no_update", "entries_no_delete", "meta_no_update", "meta_no_delete")

_APPEND_ONLY = "BEGIN SELECT RAISE(ABORT, 'the dormant ledger is append-only'); END"
_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"INSERT INTO meta (key, value) VALUES ('format', '{FORMAT}')",
    "CREATE TABLE entries (seq INTEGER PRIMARY KEY, ts TEXT NOT NULL, kind TEXT NOT NULL, "
    "request_id TEXT, model TEXT, payload TEXT NOT NULL, prev_hash TEXT NOT NULL, "
    "hash TEXT NOT NULL)",
    "CREATE INDEX entries_request ON entries (request_id)",
    *(f"CREATE TRIGGER {table}_no_{op} BEFORE {op.upper()} ON {table} {_APPEND_ONLY}"
      for table in ("entries", "meta") for op in ("update", "delete")),
)


REQUEST_ROWS = ("request-started", "request-resumed", "request-failed", "request-finished")
"""The rows of a deletion request: started, then any resumes and failures, then finished."""


@dataclasses.dataclass(frozen=True)
class RequestState:
    """Where a deletion request stands by the ledger: ``finished``, ``failed`` (its last row
    is ``request-failed``: it ended with an error, recorded) or ``unfinished`` (its last row is
    ``request-started`` or ``request-resumed``: killed, or still running)."""

    request_id: str
    model: str | None
    status: str
    started: Entry
    last: Entry

    def describe(self) -> str:
        p = self.started.payload
        what = f"{self.model} v{p.get('from_version')} -> v{p.get('to_version')}"
        text = f"{self.request_id} ({what}, started at row {self.started.seq}"
        if self.status == "failed":
            return text + (f"; failed at row {self.last.seq}: "
                           f"{str(self.last.payload.get('error'))[:160]})")
        if self.last.kind == "request-resumed":
            text += f", last resumed at row {self.last.seq}"
        return text + ")"


def request_states(entries: list[Entry]) -> list[RequestState]:
    """Every deletion request in ``entries``, in the order they started."""
    started: dict[str, Entry] = {}
    last: dict[str, Entry] = {}
    for e in entries:
        if e.kind not in REQUEST_ROWS or e.request_id is None:
            continue
        if e.kind == "request-started":
            started.setdefault(e.request_id, e)
        last[e.request_id] = e
    status = {"request-finished": "finished", "request-failed": "failed"}
    return [RequestState(rid, e.model, status.get(last[rid].kind, "unfinished"), e, last[rid])
            for rid, e in started.items()]


def _requests_note(states: list[RequestState], status: str, label: str, hint: str,
                   shown: int = 3) -> str:
    these = [s for s in states if s.status == status]
    if not these:
        return ""
    listed = "; ".join(s.describe() for s in these[:shown])
    more = f"; and {len(these) - shown} more" if len(these) > shown else ""
    plural = "s" if len(these) > 1 else ""
    return f"{len(these)} request{plural} {label}: {listed}{more}{hint}"


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def row_hash(seq: int, ts: str, kind: str, request_id: str | None, model: str | None,
             payload: dict, prev_hash: str) -> str:
    content = {"seq": seq, "ts": ts, "kind": kind, "request_id": request_id, "model": model,
               "payload": payload, "prev_hash": prev_hash}
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Entry:
    seq: int
    ts: str
    kind: str
    request_id: str | None
    model: str | None
    payload: dict
    prev_hash: str
    hash: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """``problem`` names the first bad row (``bad_seq``) when not ``ok``; ``note`` carries what
    is worth knowing on a good ledger (rows after the expected head, dropped triggers).
    ``files_checked`` counts distinct checkpoint files re-hashed."""

    ok: bool
    rows: int
    head: str | None
    bad_seq: int | None = None
    problem: str = ""
    files_checked: int = 0
    note: str = ""


class _Bad(Exception):
    def __init__(self, seq: int, problem: str) -> None:
        super().__init__(problem)
        self.seq = seq
        self.problem = problem


def _not_a_ledger(path: Path, why: str) -> DormantError:
    return DormantError(f"{path} is not a dormant ledger ({why}); give the ledger.sqlite a store "
                        "keeps, or a new path")


class Ledger:
    """One connection per instance; writers serialise on SQLite's write lock (BEGIN IMMEDIATE
    waits up to ``BUSY_TIMEOUT_S``), so several processes may append to one file."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise _not_a_ledger(self.path, "it is a directory")
        if not self.path.exists():
            if not create:
                raise DormantError(f"no ledger at {self.path}; give the ledger.sqlite a store "
                                   "keeps")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are exactly the BEGIN/COMMIT issued here.
        self._con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        self._depth = 0
        self._intact: str | None = None  # the head last proven to end an intact chain
        try:
            self._open(create)
        except BaseException:
            self._con.close()
            raise

    def _open(self, create: bool) -> None:
        try:
            tables = self._tables()
        except sqlite3.OperationalError as e:  # locked or unreadable, not the wrong kind
            raise DormantError(f"cannot read the ledger {self.path}: {e}") from None
        except sqlite3.DatabaseError as e:
            raise _not_a_ledger(self.path, f"not an SQLite file: {e}") from None
        if not tables and create:
            # Re-checked under the write lock: two processes may create the file at once.
            with self.transaction():
                if not self._tables():
                    for statement in _SCHEMA:
                        self._con.execute(statement)
            tables = self._tables()
        if not tables:
            raise _not_a_ledger(self.path, "an empty SQLite database")
        if not {"meta", "entries"} <= tables:
            raise _not_a_ledger(self.path, "an SQLite database without the ledger tables")
        row = self._con.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        if row is None or row[0] != FORMAT:
            found = "no format marker" if row is None else f"format {row[0]!r}"
            raise _not_a_ledger(self.path, f"{found}, expected {FORMAT!r}")
        columns = [r[1] for r in self._con.execute("PRAGMA table_info(entries)")]
        if columns != list(COLUMNS):
            raise _not_a_ledger(self.path, f"its entries table has columns {columns}")

    def _tables(self) -> set[str]:
        return {r[0] for r in self._con.execute("SELECT name FROM sqlite_master "
                                                "WHERE type = 'table'")}

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Ledger]:
        """Hold the write lock over several reads and appends, so a read-then-append is atomic
        against other processes. Nested use joins the outer transaction; an exception that
        leaves the outermost block rolls everything in it back."""
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        try:
            self._con.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise self._unwritable(e) from None
        self._depth = 1
        try:
            yield self
        except BaseException:
            self._depth = 0
            if self._con.in_transaction:  # SQLite may already have rolled back (disk full)
                self._con.execute("ROLLBACK")
            raise
        self._depth = 0
        try:
            self._con.execute("COMMIT")
        except sqlite3.OperationalError as e:  # a full disk may surface only here
            if self._con.in_transaction:
                self._con.execute("ROLLBACK")
            raise self._unwritable(e) from None

    def _unwritable(self, e: sqlite3.Error) -> DormantError:
        """One line for a ledger that cannot take a row: locked too long, read-only, full."""
        text = str(e)
        why = (f"another process has held it for over {BUSY_TIMEOUT_S:.0f} s"
               if "locked" in text else
               "it is read-only (permission denied or a read-only file system)"
               if "readonly" in text or "read-only" in text else
               "the disk is full" if "full" in text else text)
        return DormantError(f"cannot write to the ledger {self.path}: {why}; nothing was "
                            "recorded")

    def require_intact(self) -> None:
        """Refuse to build on a chain that does not verify: an edited, deleted or reordered row
        means the history a new row would extend is not the one recorded. The chain (not the
        checkpoints) is re-walked whenever the head differs from the last one proven."""
        head = self.head()
        if head is None or head == self._intact:
            return
        rows = self._con.execute(
            f"SELECT {', '.join(COLUMNS)} FROM entries ORDER BY seq").fetchall()
        try:
            self._walk(rows, None)
        except _Bad as bad:
            raise DormantError(
                f"the ledger {self.path} does not verify (row {bad.seq}: {bad.problem}); "
                "nothing is appended to a broken chain: restore it from a backup and check it "
                "with dormant ledger verify") from None
        self._intact = head

    def append(self, kind: str, payload: dict, *, request_id: str | None = None,
               model: str | None = None) -> Entry:
        if not isinstance(payload, dict):
            raise TypeError(f"a ledger payload is a dict, not {type(payload).__name__}")
        text = canonical_json(payload)
        # Hash what a reader will parse back (tuples become lists, int keys strings), so the
        # returned Entry and verify agree byte for byte.
        parsed = json.loads(text)
        with self.transaction():
            self.require_intact()  # under the write lock: no row lands on a broken chain
            last = self._con.execute(
                "SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (1, GENESIS) if last is None else (last[0] + 1, last[1])
            ts = datetime.now(UTC).isoformat(timespec="microseconds")
            digest = row_hash(seq, ts, kind, request_id, model, parsed, prev)
            try:
                self._con.execute(
                    "INSERT INTO entries (seq, ts, kind, request_id, model, payload, prev_hash, "
                    "hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq, ts, kind, request_id, model, text, prev, digest))
            except sqlite3.OperationalError as e:
                raise self._unwritable(e) from None
        self._intact = digest
        return Entry(seq, ts, kind, request_id, model, parsed, prev, digest)

    def entries(self, *, kind: str | None = None, request_id: str | None = None,
                model: str | None = None) -> list[Entry]:
        where, args = [], []
        for column, value in (("kind", kind), ("request_id", request_id), ("model", model)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = f"SELECT {', '.join(COLUMNS)} FROM entries"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._con.execute(sql + " ORDER BY seq", args).fetchall()
        out = []
        for seq, ts, k, rid, m, text, prev, digest in rows:
            try:
                payload = json.loads(text)
            except (TypeError, ValueError):
                raise DormantError(f"row {seq} of the ledger {self.path} has a payload that is "
                                   "not JSON; run `dormant ledger verify`") from None
            out.append(Entry(seq, ts, k, rid, m, payload, prev, digest))
        return out

    def requests(self, model: str | None = None) -> list[RequestState]:
        """Every deletion request and where it stands (see :class:`RequestState`)."""
        return request_states(self.entries(model=model))

    def head(self) -> str | None:
        row = self._con.execute("SELECT hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else row[0]

    def __len__(self) -> int:
        return self._con.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def verify(self, *, expect_head: str | None = None, store: Path | None = None
               ) -> VerifyReport:
        """Re-walk the chain in seq order and report the first problem: a row edited, missing,
        moved or rewritten; with ``store``, a checkpoint named in ``payload["files"]`` whose
        sha256 changed; with ``expect_head``, a head that is no longer in the ledger."""
        if expect_head is not None:
            expect_head = expect_head.strip().lower()
            if not re.fullmatch(r"[0-9a-f]{64}", expect_head):
                raise DormantError(f"--expect-head {expect_head!r} is not a sha256 (64 hex "
                                   "digits); give the full hash `dormant ledger head` printed")
        rows = self._con.execute(
            f"SELECT {', '.join(COLUMNS)} FROM entries ORDER BY seq").fetchall()
        last_seq = rows[-1][0] if rows else 0
        head = rows[-1][7] if rows else None
        hasher = _FileHasher(Path(store)) if store is not None else None
        try:
            self._walk(rows, hasher)
        except _Bad as bad:
            return VerifyReport(False, len(rows), head, bad.seq, bad.problem,
                                hasher.count if hasher else 0)
        files = hasher.count if hasher else 0
        notes = []
        if expect_head is not None:
            seqs = [r[0] for r in rows if r[7] == expect_head]
            if not seqs:
                where = (f"it ends at row {last_seq}, head {head[:12]}" if rows
                         else "it is empty")
                return VerifyReport(False, len(rows), head, last_seq + 1,
                                    f"head {expect_head[:12]} is not in the ledger ({where}); "
                                    "the ledger was truncated or rewritten", files)
            if seqs[0] != last_seq:
                after = last_seq - seqs[0]
                notes.append(f"the expected head is row {seqs[0]}; {after} "
                             f"row{'s' if after > 1 else ''} came after it")
        # a request with no outcome row is no break of the chain, but an operator must hear
        # of it: a killed process leaves exactly that
        states = self.requests()
        for status, label, hint in (
                ("unfinished", "unfinished (killed, or still running)",
                 "; rerun the same request to resume it"),
                ("failed", "failed", "")):
            note = _requests_note(states, status, label, hint)
            if note:
                notes.append(note)
        present = {r[0] for r in self._con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        missing = [t for t in TRIGGERS if t not in present]
        if missing:
            notes.append(f"the append-only triggers {', '.join(missing)} were dropped")
        return VerifyReport(True, len(rows), head, None, "", files, "; ".join(notes))

    def _walk(self, rows: list[tuple], hasher: _FileHasher | None) -> None:
        prev_seq, prev_hash = 0, GENESIS
        for seq, ts, kind, request_id, model, text, stored_prev, digest in rows:
            if seq != prev_seq + 1:
                one = seq == prev_seq + 2
                gone = f"row {prev_seq + 1} is" if one else f"rows {prev_seq + 1}-{seq - 1} are"
                after = (f"row {seq} follows row {prev_seq}" if prev_seq
                         else f"the ledger starts at row {seq}")
                deleted = "a row was" if one else "rows were"
                raise _Bad(prev_seq + 1, f"{gone} missing: {after}; {deleted} deleted")
            label = f"row {seq} ({kind} at {ts})"
            try:
                payload = json.loads(text)
            except (TypeError, ValueError):
                raise _Bad(seq, f"{label}: its payload is not JSON; the row was edited") from None
            content = (ts, kind, request_id, model, payload, stored_prev)
            if canonical_json(payload) != text or row_hash(seq, *content) != digest:
                moved = next((s for s in range(1, rows[-1][0] + 1)
                              if s != seq and row_hash(s, *content) == digest), None)
                if moved is not None:
                    raise _Bad(seq, f"{label}: it holds the content of row {moved}; rows were "
                                    "swapped or reordered")
                raise _Bad(seq, f"{label}: its content does not match its hash; the row was "
                                "edited")
            if stored_prev != prev_hash:
                whose = f"row {prev_seq}'s hash" if prev_seq else "the genesis value"
                raise _Bad(seq, f"row {seq}: prev_hash does not match {whose}; rows were "
                                "reordered, removed or rewritten")
            if hasher is not None:
                hasher.check(seq, payload)
            prev_seq, prev_hash = seq, digest

    def export(self, fmt: str) -> str:
        rows = [e.to_dict() for e in self.entries()]
        if fmt == "json":
            return json.dumps(rows, indent=2)
        if fmt == "csv":
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow({**row, "payload": canonical_json(row["payload"])})
            return buf.getvalue()
        raise DormantError(f"unknown export format {fmt!r}; use json or csv")


class _FileHasher:
    """Each distinct checkpoint is hashed once; every row naming it must agree with it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache: dict[str, str | None] = {}

    @property
    def count(self) -> int:
        return sum(v is not None for v in self.cache.values())

    def check(self, seq: int, payload: dict) -> None:
        files = payload.get("files", [])
        if not isinstance(files, list):
            raise _Bad(seq, f"row {seq}: payload files is not a list")
        for item in files:
            if not (isinstance(item, dict) and isinstance(item.get("path"), str)
                    and isinstance(item.get("sha256"), str)):
                raise _Bad(seq, f"row {seq}: a payload files entry lacks path/sha256: {item!r}")
            rel, recorded = item["path"], item["sha256"]
            if rel not in self.cache:
                self.cache[rel] = self._hash(self.root / rel)
            actual = self.cache[rel]
            if actual is None:
                raise _Bad(seq, f"row {seq}: {rel} is missing from the store (the ledger "
                                f"recorded sha256 {recorded[:12]}); the checkpoint was deleted "
                                "or moved")
            if actual != recorded:
                raise _Bad(seq, f"row {seq}: {rel} has sha256 {actual[:12]} but the ledger "
                                f"recorded {recorded[:12]}; the checkpoint was replaced")

    @staticmethod
    def _hash(path: Path) -> str | None:
        # Imported here: the dormant.store package pulls in torch, and the ledger alone
        # (ledger head, show, concurrent writers) should start without it.
        from dormant.store.files import sha256_file

        return sha256_file(path) if path.is_file() else None
