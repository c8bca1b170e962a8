"""The relearning study's declarative spec, validated by pydantic (unknown keys are errors)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_METHODS = ["finetune", "gradient_ascent", "neggrad_plus"]


class RelearnSpec(BaseModel):
    """A grid: methods x seeds x k over one dataset, model and forget set.

    ``None`` budgets come from the dataset's profile (``dormant.experiments.profiles``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = "digits"
    data_root: str | None = None
    download: bool = False
    train_size: int | None = Field(default=None, gt=0)
    model: str | None = None
    forget: str | None = None
    cscores: str | None = None
    methods: list[str] = Field(default_factory=lambda: list(DEFAULT_METHODS))
    hparams: dict[str, dict] = Field(default_factory=dict)
    k: list[int] = Field(default_factory=lambda: [0, 5])
    seeds: list[int] = Field(default_factory=lambda: [0])
    train_steps: int | None = Field(default=None, gt=0)
    unlearn_steps: int | None = Field(default=None, gt=0)
    unlearn_lr: float | None = Field(default=None, gt=0)
    attack_steps: int | None = Field(default=None, gt=0)
    attack_lr: float | None = Field(default=None, gt=0)
    eval_every: int | None = Field(default=None, gt=0)
    stop_at_oracle: bool = True
    device: str = "auto"

    @field_validator("k")
    @classmethod
    def _k_non_negative(cls, v: list[int]) -> list[int]:
        if not v or any(k < 0 for k in v):
            raise ValueError("k must be a non-empty list of integers >= 0")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds_non_negative(cls, v: list[int]) -> list[int]:
        if any(s < 0 for s in v):
            raise ValueError("seeds must be integers >= 0")
        return v

    @field_validator("seeds", "methods")
    @classmethod
    def _non_empty(cls, v: list) -> list:
        if not v:
            raise ValueError("must not be empty")
        return v
