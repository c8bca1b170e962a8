"""Deletion requests for real: the model store, one deleter per kind of deletion, the checks
before and after, the policy's verdict, the hash-chained ledger, and the audit of models
unlearned elsewhere. A request runs plan -> unlearn (its deleter) -> check (``assess``) ->
judge (``policy``) -> record, each stage in its own module (``forget`` runs them)."""

from dormant.requests.audit import audit
from dormant.requests.deleters import available_deleters, register_deleter
from dormant.requests.deleters.retrain import DEFAULT_METHOD
from dormant.requests.forget import process_batch, process_request
from dormant.requests.ledger import Ledger
from dormant.requests.policy import Policy, load_policy
from dormant.requests.request import Request, RequestFailed
from dormant.requests.store import ModelStore, parse_ref

__all__ = ["DEFAULT_METHOD", "Ledger", "ModelStore", "Policy", "Request", "RequestFailed",
           "audit", "available_deleters", "register_deleter",
           "load_policy", "parse_ref", "process_batch", "process_request"]
