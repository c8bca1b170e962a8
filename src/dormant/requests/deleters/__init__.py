"""Deleters: one per kind of deletion, each registered, so that no stage of a request asks
which method it runs.

A deleter knows which methods it runs and which versions it can delete from, the
hyper-parameters a request of it runs, how it makes the new version (and which files of its
own the version has), what a full retrain costs against it, and its own tamper oracle. The
built-ins: ``retrain`` (exact, the default on a single model), ``sisa`` (exact, the only one
for a SISA version) and ``approximate`` (every other registered unlearning method). A new kind
is one file plus ``register_deleter``, from inside the package or out."""

from dormant.requests.deleters import approximate, retrain, sisa  # noqa: F401 - built-ins
from dormant.requests.deleters.base import (
    DEFAULT_PRESET,
    Deleter,
    Job,
    Made,
    add_model,
    available_deleters,
    choose,
    method_hparams,
    owner_of,
    register_deleter,
)

__all__ = ["DEFAULT_PRESET", "Deleter", "Job", "Made", "add_model", "available_deleters",
           "choose", "method_hparams", "owner_of", "register_deleter"]
