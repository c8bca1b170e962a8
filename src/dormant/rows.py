"""The rows a study writes, one per cell, as pydantic models.

Every study's row has the same head: the cell's key, ``status`` (``ok`` or ``failed``) and,
for a failed cell, ``error`` (why, in one line). A cell fails for any reason (a diverging
loss, a worker that died more often than the executor retries, a bug) without stopping the
study; the report lists failed rows. Measurements of a failed cell are absent (None).

Relearning rows declare every column. Backdoor rows declare the study's own columns and
carry each registered defense's measurements as further columns (``extra="allow"``), since a
defense added from outside the package brings columns of its own.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cell: str
    status: Literal["ok", "failed"] = "ok"
    error: str | None = None
    transient: bool = False
    """A failure of the machine rather than of the cell (a worker that died, out of memory,
    a file system error): a rerun of the study tries the cell again. A diverging loss or a
    bad setting gives the same row every time and is not retried."""
    dataset: str
    model: str
    method: str
    seed: int
    seconds: float | None = None
    """Wall seconds of this cell's own work (cached artefacts it reused cost nothing)."""


TIMING_KEYS = ("seconds", "unlearn_seconds", "attack_seconds")
"""Columns that differ between two runs of the same cell; everything else is reproducible."""


class RelearnRow(Row):
    """One relearning cell: a pipeline, seed and forget set, attacked with k leaked examples
    on one relearn set at one learning rate and step budget."""

    forget: str
    k: int
    relearn_set: str
    attack_lr: float
    attack_steps: int
    hparams: dict[str, Any] = {}
    pipeline: list[list[Any]] = []
    calibration: list[dict[str, Any]] = []
    protocol: str | None = None
    """The frozen verdict protocol's version and hash (``experiments/protocol.yaml``)."""
    fit_target: float | None = None
    # after unlearning
    retain_acc: float | None = None
    forget_acc: float | None = None
    test_acc: float | None = None
    tow: float | None = None
    train_fit_acc: float | None = None
    train_steps: int | None = None
    l2_to_original: float | None = None
    forget_size: int | None = None
    heldout_size: int | None = None
    split: str | None = None
    # analysis of the unlearned model (``analysis: true``)
    l2_to_oracle: float | None = None
    mia_auc: float | None = None
    mia_loss_auc: float | None = None
    barrier: float | None = None
    lmc: dict[str, list[float]] | None = None
    # after the relearning attack
    retain_acc_attacked: float | None = None
    test_acc_attacked: float | None = None
    forget_acc_attacked: float | None = None
    forget_acc_attacked_last: float | None = None
    forget_acc_attacked_end: float | None = None
    recovery: float | None = None
    aurc: float | None = None
    mia_auc_attacked: float | None = None
    mia_loss_auc_attacked: float | None = None
    attack: dict[str, Any] | None = None
    curve_steps: list[int] | None = None
    curve_forget_acc: list[float] | None = None
    unlearn_seconds: float | None = None
    attack_seconds: float | None = None
    # per-example membership inference (``mia: [lira, rmia, ulira]``,
    # ``dormant.experiments.membership``), after unlearning and after the attack
    mia_shadows: int | None = None
    mia_variance: str | None = None
    lira_auc: float | None = None
    lira_tpr_at_1pct: float | None = None
    lira_forget_scores: list[float] | None = None
    rmia_auc: float | None = None
    rmia_tpr_at_1pct: float | None = None
    ulira_auc: float | None = None
    ulira_accuracy: float | None = None
    ulira_retain_exposure: dict[str, Any] | None = None
    ulira_forget_gaps: list[float | None] | None = None
    forgetting_quality: float | None = None
    challenge_score: float | None = None
    challenge_models: int | None = None
    lira_auc_attacked: float | None = None
    lira_tpr_at_1pct_attacked: float | None = None
    lira_forget_scores_attacked: list[float] | None = None
    rmia_auc_attacked: float | None = None
    rmia_tpr_at_1pct_attacked: float | None = None
    ulira_auc_attacked: float | None = None
    ulira_accuracy_attacked: float | None = None


class ShadowRow(Row):
    """One worker's share of a seed's shadow models (``mia: [lira, ...]``), trained into the
    cache before the study's cells; ``method`` is ``shadows``."""

    forget: str
    shadows: list[int]


class BackdoorRow(Row):
    """One backdoor cell: a method under a condition for a seed; scan columns are extra."""

    model_config = ConfigDict(extra="allow")

    condition: str
    target: int
    strategy: str
    forget_size: int | None = None
    poisons: int | None = None
    trigger: str | None = None
    amplitude: float | None = None
    hparams: dict[str, Any] | None = None
    matched_drop: float | None = None
    unlearn_seconds: float | None = None


def without_timings(row: dict) -> dict:
    """``row`` minus the columns that measure time, for comparing two runs of a cell."""
    return {k: v for k, v in row.items() if k not in TIMING_KEYS}
