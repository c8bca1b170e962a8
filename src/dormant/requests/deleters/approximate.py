"""Approximate deletion: any registered unlearning method other than the exact ones, run on
the base version. Its tamper oracle is a retrain on the retain set with the original's recipe,
init and seed, trained once for the whole batch; so a request with an approximate method
costs that retrain as well as the method."""

from __future__ import annotations

from dormant.requests.deleters.base import Deleter, register_deleter

register_deleter(Deleter())
