"""Exact deletion by retraining: the base version's recipe, init and seed on the retain set.
The new model is the retrain oracle the tamper verdict compares every method with, so its own
excess is 0 by definition (verdict ``resists``) and no second model is trained; at the store's
scale it costs one training run. It is the default on a single model."""

from __future__ import annotations

from dormant.requests.deleters.base import Deleter, Job, Made, register_deleter

DEFAULT_METHOD = "retrain"


class Retrain(Deleter):
    name = "retrain"
    methods = (DEFAULT_METHOD,)
    catch_all = False
    exact = True
    default = True

    def run(self, job: Job) -> Made:
        made = super().run(job)
        made.full_retrain_seconds = made.seconds  # the retrain is the full retrain
        return made


register_deleter(Retrain())
