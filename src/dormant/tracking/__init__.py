"""Experiment tracking and the model-registry mirror, over MLflow (an optional extra).

- ``dormant.tracking.study.track_study``: a study's cells as MLflow runs (parameters,
  metrics with curves as steps, verdict tags, the report as an artifact).
- ``dormant.tracking.mirror``: a model store's versions mirrored into the MLflow Model
  Registry, and the disagreements between the mirror and the store's ledger.

Nothing here imports MLflow at import time: the CLI registers its flags from
``dormant.tracking.options`` and MLflow is loaded only when a command uses it.
"""
