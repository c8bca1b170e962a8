"""The service's own state, ``service.sqlite`` beside the store's ledger: its bearer tokens
(hashed), its queue of deletion requests, and the callbacks still to deliver.

The ledger stays the only record of what happened to a model. This file holds what the
ledger does not: who filed a request over HTTP, where to tell them, and the requests waiting
their turn. A request is in the queue before the service answers 202, so a service killed
with ``kill -9`` finds it again on restart."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dormant.errors import DormantError

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, hash TEXT NOT NULL,
    secret TEXT NOT NULL, created REAL NOT NULL, revoked REAL);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY, token_id TEXT NOT NULL, idempotency_key TEXT, body TEXT NOT NULL,
    model TEXT NOT NULL, status TEXT NOT NULL, stage TEXT, error TEXT,
    created REAL NOT NULL, updated REAL NOT NULL, UNIQUE (token_id, idempotency_key));
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, token_id TEXT NOT NULL,
    url TEXT NOT NULL, body TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL,
    next_at REAL NOT NULL, last_error TEXT);
CREATE INDEX IF NOT EXISTS requests_status ON requests (status, created);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_at);
"""

STATUSES = ("pending", "running", "finished", "failed", "denied")
"""A request's life in the service: queued, being processed, and its three ends (finished:
a verdict was recorded; failed: it stopped with an error after its ledger rows started;
denied: refused before any work, as bad input)."""
ENDED = ("finished", "failed", "denied")
Outbox = tuple[str, str, str]
"""A callback to queue: (url, the filing token's id, the JSON body)."""


@dataclass(frozen=True)
class Token:
    id: str
    name: str
    role: str
    hash: str
    secret: str
    created: float
    revoked: float | None


@dataclass(frozen=True)
class Queued:
    id: str
    token_id: str
    body: dict
    model: str
    status: str
    stage: str | None
    error: str | None
    created: float
    updated: float


class ServiceDB:
    """``service.sqlite`` in a store folder. Every call opens its own connection, so the
    worker, the callback sender and the web threads never share one."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / "service.sqlite"
        new = not self.path.exists()
        try:
            with self._connect() as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
        except sqlite3.Error as e:
            raise DormantError(f"the service database {self.path} cannot be opened ({e}); "
                               "check the store folder's permissions") from None
        if new:  # token hashes and callback secrets: for the service's owner only
            os.chmod(self.path, 0o600)

    def hold(self) -> None:
        """Take the store's one service lock for this process's life (the kernel drops it
        when the process dies, ``kill -9`` included): two services on one store would run
        each other's requests."""
        f = open(self.path.with_name(".service.lock"), "a+")  # noqa: SIM115 - kept open
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise DormantError(f"another dormant serve is running on the store "
                               f"{self.path.parent}; stop it first") from None
        self._held = f

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def _rows(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        db = self._connect()
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    # --- tokens ------------------------------------------------------------------------------

    def add_token(self, t: Token) -> None:
        """Add ``t``; refused while another token of the same name is not revoked, so the name
        a sign-off records names one holder."""
        with self.tx() as db:
            same = db.execute("SELECT id FROM tokens WHERE name = ? AND revoked IS NULL",
                              (t.name,)).fetchone()
            if same is not None:
                raise DormantError(f"token {same['id']} is named {t.name!r} already; revoke "
                                   "it first, or choose another name")
            db.execute("INSERT INTO tokens VALUES (?,?,?,?,?,?,?)",
                       (t.id, t.name, t.role, t.hash, t.secret, t.created, t.revoked))

    def token(self, token_id: str) -> Token | None:
        rows = self._rows("SELECT * FROM tokens WHERE id = ?", (token_id,))
        return Token(**dict(rows[0])) if rows else None

    def tokens(self) -> list[Token]:
        return [Token(**dict(r)) for r in self._rows("SELECT * FROM tokens ORDER BY created")]

    def revoke(self, token_id: str) -> Token:
        with self.tx() as db:
            n = db.execute("UPDATE tokens SET revoked = ? WHERE id = ? AND revoked IS NULL",
                           (time.time(), token_id)).rowcount
        t = self.token(token_id)
        if t is None:
            raise DormantError(f"no token {token_id!r}; see dormant token list")
        if not n:
            raise DormantError(f"token {token_id} ({t.name}) was revoked already")
        return t

    # --- the queue ---------------------------------------------------------------------------

    def enqueue(self, rid: str, token_id: str, body: dict, model: str,
                idempotency_key: str | None, outbox: Outbox | None = None
                ) -> tuple[Queued, bool]:
        """The request, queued as ``pending`` with its ``pending`` callback in the same
        transaction; or, when this token filed one with the same idempotency key before,
        that one (``False``: nothing new was queued)."""
        now = time.time()
        with self.tx() as db:
            if idempotency_key is not None:
                row = db.execute("SELECT id FROM requests WHERE token_id = ? AND "
                                 "idempotency_key = ?", (token_id, idempotency_key)).fetchone()
                if row is not None:
                    return self._queued(db, row["id"]), False
            db.execute("INSERT INTO requests VALUES (?,?,?,?,?,?,?,?,?,?)",
                       (rid, token_id, idempotency_key, json.dumps(body), model, "pending",
                        None, None, now, now))
            self._post(db, rid, outbox)
            return self._queued(db, rid), True

    @staticmethod
    def _queued(db: sqlite3.Connection, rid: str) -> Queued:
        r = dict(db.execute("SELECT * FROM requests WHERE id = ?", (rid,)).fetchone())
        r.pop("idempotency_key")
        r["body"] = json.loads(r["body"])
        return Queued(**r)

    def get(self, rid: str) -> Queued | None:
        db = self._connect()
        try:
            row = db.execute("SELECT id FROM requests WHERE id = ?", (rid,)).fetchone()
            return None if row is None else self._queued(db, rid)
        finally:
            db.close()

    def listed(self, *, token_id: str | None = None, status: str | None = None,
               model: str | None = None, limit: int = 100) -> list[Queued]:
        """Newest first; only ``token_id``'s when given."""
        where, args = [], []
        for col, val in (("token_id", token_id), ("status", status), ("model", model)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        sql = ("SELECT * FROM requests" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY created DESC, rowid DESC LIMIT ?")
        out = []
        for r in self._rows(sql, (*args, limit)):
            d = dict(r)
            d.pop("idempotency_key")
            d["body"] = json.loads(d["body"])
            out.append(Queued(**d))
        return out

    def next_pending(self) -> Queued | None:
        rows = self._rows("SELECT id FROM requests WHERE status = 'pending' "
                          "ORDER BY created, rowid LIMIT 1")
        return self.get(rows[0]["id"]) if rows else None

    def with_status(self, status: str) -> list[Queued]:
        """Every request of ``status``, oldest first."""
        return self.listed(status=status, limit=-1)[::-1]  # SQLite: LIMIT -1 is no limit

    def set_status(self, rid: str, status: str, *, error: str | None = None,
                   outbox: Outbox | None = None) -> None:
        """A status change and the callback that reports it, in one transaction: a kill
        between the two can lose neither."""
        with self.tx() as db:
            db.execute("UPDATE requests SET status = ?, error = ?, updated = ? WHERE id = ?",
                       (status, error, time.time(), rid))
            self._post(db, rid, outbox)

    def set_stage(self, rid: str, stage: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE requests SET stage = ?, updated = ? WHERE id = ?",
                       (stage[:300], time.time(), rid))

    def counts(self) -> dict[str, int]:
        rows = self._rows("SELECT status, COUNT(*) AS n FROM requests GROUP BY status")
        return {s: 0 for s in STATUSES} | {r["status"]: r["n"] for r in rows}

    # --- the callbacks' outbox ---------------------------------------------------------------

    def post(self, rid: str, outbox: Outbox | None) -> None:
        with self.tx() as db:
            self._post(db, rid, outbox)

    @staticmethod
    def _post(db: sqlite3.Connection, rid: str, outbox: Outbox | None) -> None:
        if outbox is None:
            return
        url, token_id, body = outbox
        db.execute("INSERT INTO outbox (request_id, token_id, url, body, state, attempts, "
                   "next_at) VALUES (?,?,?,?,'pending',0,?)",
                   (rid, token_id, url, body, time.time()))

    def due(self, now: float) -> list[sqlite3.Row]:
        """Callbacks to send now: of each request only its oldest undelivered one, so a
        receiver sees a request's changes in the order they happened."""
        return self._rows(
            "SELECT * FROM outbox o WHERE state = 'pending' AND next_at <= ? AND NOT EXISTS "
            "(SELECT 1 FROM outbox p WHERE p.request_id = o.request_id AND "
            "p.state = 'pending' AND p.id < o.id) ORDER BY id", (now,))

    def delivered(self, oid: int, attempts: int) -> None:
        with self.tx() as db:
            db.execute("UPDATE outbox SET state = 'delivered', attempts = ?, last_error = NULL "
                       "WHERE id = ?", (attempts, oid))

    def retry(self, oid: int, attempts: int, next_at: float, error: str, dead: bool) -> None:
        with self.tx() as db:
            db.execute("UPDATE outbox SET state = ?, attempts = ?, next_at = ?, last_error = ? "
                       "WHERE id = ?", ("dead" if dead else "pending", attempts, next_at,
                                        error[:300], oid))

    def outbox(self, rid: str | None = None) -> list[dict]:
        sql = "SELECT * FROM outbox" + (" WHERE request_id = ?" if rid else "") + " ORDER BY id"
        return [dict(r) for r in self._rows(sql, (rid,) if rid else ())]
