"""The study commands' tracking flags, as a settings model (the flags derive from it)."""

from __future__ import annotations

from typing import Literal

from dormant.settings import Settings

TRACKERS = ("mlflow",)


class TrackingOptions(Settings):
    """``--track mlflow`` records each cell of the study as an MLflow run once the report
    is written; ``--tracking-uri`` says where (default: ``$MLFLOW_TRACKING_URI``, else a
    local ``./mlruns`` folder, no server)."""

    track: Literal["mlflow"] | None = None
    tracking_uri: str | None = None
