"""Deletion requests for real: the model store, the checks before and after, the policy's
verdict, the hash-chained ledger, and the audit of models unlearned elsewhere."""

from dormant.requests.audit import audit
from dormant.requests.forget import (
    DEFAULT_METHOD,
    Request,
    RequestFailed,
    process_batch,
    process_request,
)
from dormant.requests.ledger import Ledger
from dormant.requests.policy import Policy, load_policy
from dormant.requests.store import ModelStore, parse_ref

__all__ = ["DEFAULT_METHOD", "Ledger", "ModelStore", "Policy", "Request", "RequestFailed",
           "audit",
           "load_policy", "parse_ref", "process_batch", "process_request"]
