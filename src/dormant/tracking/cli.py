"""The command-line side of tracking: ``--track`` on the study commands and ``dormant store
mirror``. MLflow is imported only when one of them is used."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from dormant.errors import DormantError


@contextlib.contextmanager
def tracked(options: Any, out: Path, spec: Any, command: str) -> Iterator[None]:
    """Around a study command: with ``--track mlflow``, MLflow and its store are checked
    before the study runs, and once its report is written (also when every cell failed and
    the command exits 1) the study is tracked. An interrupted or broken study is not."""
    if options.track is None:
        if options.tracking_uri is not None:
            raise DormantError("--tracking-uri goes with --track mlflow; add --track mlflow "
                               "to record the study")
        yield
        return
    from dormant.tracking.study import prepare, track_study

    uri, client = prepare(options.tracking_uri)
    try:
        yield
    except typer.Exit:  # the report is written; the command exits non-zero
        _track(track_study, out, uri, spec, command, client)
        raise
    _track(track_study, out, uri, spec, command, client)


def _track(track_study, out: Path, uri: str, spec: Any, command: str, client: Any) -> None:
    from dormant.cli_common import console

    try:
        done = track_study(out, tracking_uri=uri, spec=spec, command=command, client=client)
    except DormantError as e:
        # the study's results are safe on disk; only the record in MLflow is missing
        raise DormantError(f"{e} (the study's results are in {out}; rerun the same command "
                           "to track them: no cell runs again)") from None
    console.print(done.line(), highlight=False, markup=False, soft_wrap=True)


# --- dormant store mirror -------------------------------------------------------------------


def store_mirror(
    store: Annotated[Path, typer.Argument(help="store folder")],
    name: Annotated[str, typer.Argument(help="the model's name in the store")],
    tracking_uri: Annotated[str | None, typer.Option(
        help="MLflow tracking URI (default: the one recorded for NAME, else "
             "$MLFLOW_TRACKING_URI, else ./mlruns)")] = None,
    registry_uri: Annotated[str | None, typer.Option(
        help="MLflow registry URI, where it differs from the tracking URI")] = None,
    registered_model: Annotated[str | None, typer.Option(
        help="the registered model's name (default: NAME)")] = None,
    alias: Annotated[str | None, typer.Option(
        help="the alias that follows the current (promoted) version (default: champion)")]
    = None,
    stop: Annotated[bool, typer.Option(
        "--stop", help="stop mirroring NAME (recorded in the ledger); the registry is left "
                       "as it is")] = False,
    ledger: Annotated[Path | None, typer.Option(
        "--ledger", help="ledger file (default: the store's ledger.sqlite)")] = None,
) -> None:
    """Mirror NAME's versions into the MLflow Model Registry: each version registered with
    its checkpoint, tagged with its request ids, verdict and ledger row hash, and the alias
    on the current promoted version. The first call records the mirror in the ledger; later
    forget, approve, reject and store add sync it, and ledger verify checks it."""
    from dormant.cli_common import console
    from dormant.requests import ModelStore
    from dormant.tracking.mirror import configure, stop_mirror, sync

    st = ModelStore(store, ledger)
    if stop:
        if any(v is not None for v in (tracking_uri, registry_uri, registered_model, alias)):
            raise DormantError("--stop takes no other mirror option; it stops mirroring NAME")
        row = stop_mirror(st, name)
        console.print(f"stopped mirroring {name} (ledger row {row.seq})", highlight=False)
        return
    config, row = configure(st, name, tracking_uri=tracking_uri, registry_uri=registry_uri,
                            registered_model=registered_model, alias=alias)
    if row is not None:
        console.print(f"recorded the mirror of {name} to {config.registered_model} at "
                      f"{config.registry_uri} in the ledger (row {row.seq})", highlight=False,
                      markup=False)
    console.print(sync(st, name, config).line(), highlight=False, markup=False,
                  soft_wrap=True)


def mirror_after(store: Any, names: list[str] | None = None) -> None:
    """After a command changed the store: sync every mirror recorded for ``names`` (default:
    every model). The change is in the ledger already, which is the authority; a mirror
    that cannot be synced now gets one warning line, and ledger verify names what lags."""
    from dormant.cli_common import console
    from dormant.tracking.mirror import mirrors, sync

    for name, config in mirrors(store.ledger).items():
        if names is not None and name not in names:
            continue
        try:
            console.print(sync(store, name, config).line(), highlight=False, markup=False,
                          soft_wrap=True)
        except DormantError as e:
            console.print(f"warning: the registry mirror of {name} was not synced: {e}; "
                          f"run dormant store mirror {store.root} {name}", style="yellow",
                          highlight=False, markup=False, soft_wrap=True)
