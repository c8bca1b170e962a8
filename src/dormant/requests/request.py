"""A deletion request as a user files it, and how one ends other than by finishing."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field

import torch

from dormant.errors import DormantError

REQUEST_ID = re.compile(r"[0-9a-f]{16}")
"""What a request id looks like (``new_request_id``)."""


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class Request:
    model: str
    ids: torch.Tensor
    requester: str
    reason: str
    version: int | None = None
    method: str | None = None
    """None: the method of the deleter that claims the version (``sisa`` on a SISA version),
    else the default deleter's (``retrain``)."""
    hparams: dict = field(default_factory=dict)
    accept_warnings: bool = False
    seed: int = 0
    preset: str | None = None
    """The method's preset (``dormant methods --preset``); None: ``DEFAULT_PRESET``."""
    request_id: str | None = None
    """The id its ledger rows carry; None: a new random one. A service that answered with an
    id before the work gives it here, so its queue and the ledger name the request alike."""

    def __post_init__(self) -> None:
        check_text("requester", self.requester, "who asked for the deletion, e.g. alice")
        check_text("reason", self.reason, "why, in a few words, e.g. 'GDPR art. 17'")
        if self.request_id is not None and not REQUEST_ID.fullmatch(self.request_id):
            raise DormantError(f"request id {self.request_id!r} is not 16 lowercase hex digits")


def check_text(flag: str, value, hint: str) -> str:
    """A request's ``--requester`` or ``--reason``: recorded for good, so never empty."""
    if not isinstance(value, str) or not value.strip():
        raise DormantError(f"--{flag} is empty; say {hint}")
    return value


class RequestFailed(RuntimeError):
    """A request that failed after its ``request-started`` row for a reason other than bad
    input (a diverging method, a full disk, a crash in a check); its ``request-failed`` row is
    written. The message is one line naming the request, the error and the ledger row."""

    def __init__(self, message: str, request_id: str, seq: int | None,
                 exit_code: int = 1) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.seq = seq
        self.exit_code = exit_code
        """1, or 128 + the signal's number for a request a signal stopped (the shell's
        convention: 143 for SIGTERM, 130 for SIGINT)."""


class Interrupted(BaseException):  # noqa: N818 - a signal, like KeyboardInterrupt
    """SIGTERM (a scheduler's timeout) or SIGINT during a request: raised where the process
    is, so the request records ``request-failed`` and removes its half-written files."""

    def __init__(self, signum: int, name: str) -> None:
        super().__init__(f"interrupted by {name}")
        self.signum = signum
        self.name = name
