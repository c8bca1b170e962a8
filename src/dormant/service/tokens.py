"""Bearer tokens with roles. A token is shown once, when made; the service keeps its SHA-256
only, so a copy of ``service.sqlite`` lets nobody in. Each token also has a callback secret:
the service signs the callbacks of the requests a token filed with it (HMAC-SHA256), so the
receiver can tell them from forgeries."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from dormant.errors import DormantError
from dormant.service.db import ServiceDB, Token

ROLES: dict[str, frozenset[str]] = {
    # files deletion requests and reads its own: a privacy system's connector
    "requester": frozenset({"file"}),
    # reads every request and signs off warned versions: a data-protection officer
    "reviewer": frozenset({"read_all", "sign_off"}),
    # adds models and makes tokens; signs nothing off, so no one person both sets the
    # service up and accepts a warning
    "admin": frozenset({"read_all", "add_model", "tokens"}),
}
PREFIX = "dmt"
_TOKEN = re.compile(rf"{PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{20,100}})")
_NAME = re.compile(r"[\w.@+-][\w.@+ -]{0,63}")


@dataclass(frozen=True)
class Caller:
    """Who is calling: a token that verified and is not revoked."""

    id: str
    name: str
    role: str
    secret: str

    def can(self, permission: str) -> bool:
        return permission in ROLES[self.role]


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_role(role: str) -> str:
    if role not in ROLES:
        raise DormantError(f"role {role!r} is not one of: {', '.join(ROLES)}")
    return role


def create_token(db: ServiceDB, role: str, name: str) -> tuple[str, Token]:
    """A new token for ``name`` with ``role``: the token text (shown once) and its record,
    which holds the callback secret."""
    check_role(role)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DormantError(f"token name {name!r} is not allowed; use up to 64 letters, digits, "
                           "spaces and . _ @ + - (e.g. 'fides-connector' or 'dpo@example.org')")
    tid = secrets.token_hex(6)
    text = f"{PREFIX}_{tid}_{secrets.token_urlsafe(32)}"
    t = Token(tid, name, role, digest(text), f"whsec_{secrets.token_urlsafe(32)}", time.time(),
              None)
    db.add_token(t)
    return text, t


def authenticate(db: ServiceDB, text: str | None) -> Caller | None:
    """The caller ``text`` proves, or None (no such token, a wrong secret, revoked)."""
    m = _TOKEN.fullmatch(text or "")
    if m is None:
        return None
    t = db.token(m.group(1))
    if t is None or t.revoked is not None or not hmac.compare_digest(t.hash, digest(text)):
        return None
    return Caller(t.id, t.name, t.role, t.secret)


def sign(secret: str, body: bytes) -> str:
    """The value of a callback's ``X-Dormant-Signature`` header for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def form_key(token: str) -> str:
    """The dashboard's anti-forgery value for the forms of the session holding ``token``:
    another site can make a browser post a form, but cannot read this off the page."""
    return hmac.new(digest(token).encode(), b"dormant-dashboard-form",
                    hashlib.sha256).hexdigest()
