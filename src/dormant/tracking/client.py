"""MLflow, loaded on first use: the extra's install line when it is missing, tracking URIs
resolved the way MLflow users expect, and MLflow's errors as one line."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from dormant.errors import DormantError

INSTALL = "pip install 'dormant[mlflow]'"


def require_mlflow(what: str = "--track mlflow"):
    """The ``mlflow`` module, or one line naming the extra to install."""
    try:
        import mlflow
    except ImportError:
        raise DormantError(f"{what} needs MLflow, an optional extra: {INSTALL}") from None
    return mlflow


def resolve_uri(uri: str | None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else ``./mlruns``; a plain path becomes an
    absolute ``file:`` URI, so a URI recorded now still names the same folder later."""
    uri = (uri or os.environ.get("MLFLOW_TRACKING_URI") or "mlruns").strip()
    if not uri:
        raise DormantError("--tracking-uri is empty; give a folder or an MLflow URI, e.g. "
                           "./mlruns, sqlite:///mlflow.db or http://mlflow:5000")
    if "://" in uri or uri.startswith(("file:", "databricks")):
        return uri
    return Path(uri).expanduser().resolve().as_uri()


def is_file_store(uri: str) -> bool:
    return uri.startswith("file:")


def check_file_store(uri: str, flag: str = "--tracking-uri") -> None:
    """Refuse, before any work, a local store folder that cannot be made or written."""
    if not is_file_store(uri):
        return
    from urllib.parse import unquote, urlparse

    from dormant.requests.store import store_root_of

    path = Path(unquote(urlparse(uri).path))
    root = store_root_of(path)
    if root is not None:
        raise DormantError(f"{flag} {path} is inside the model store {root}; only the store "
                           "writes there: give a folder outside it")
    if path.exists() and not path.is_dir():
        raise DormantError(f"{flag} {path} is a file; give a folder for MLflow's runs")
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise DormantError(f"{flag} {path}: cannot write into {ancestor}; give a writable "
                           "folder or an MLflow server's URI")


def open_client(uri: str, registry_uri: str | None = None, what: str = "--track mlflow"):
    """An ``MlflowClient`` on ``uri`` (and ``registry_uri``, default the same)."""
    require_mlflow(what)
    registry_uri = registry_uri or uri
    if is_file_store(uri) or is_file_store(registry_uri):
        # MLflow 3 keeps the file store in maintenance and refuses it unless asked: a local
        # folder with no server is what --track's default promises
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    with mlflow_errors(uri):
        return MlflowClient(tracking_uri=uri, registry_uri=registry_uri)


@contextlib.contextmanager
def quick(uri: str) -> Iterator[None]:
    """A probe that fails in seconds: MLflow retries a server that does not answer for
    minutes, which a check before the work must not wait out (the user's own settings of
    these variables win)."""
    saved = {k: os.environ.get(k) for k in PROBE}
    for k, v in PROBE.items():
        os.environ.setdefault(k, v)
    try:
        with mlflow_errors(uri):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


PROBE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


@contextlib.contextmanager
def mlflow_errors(uri: str) -> Iterator[None]:
    """MLflow's exceptions (a server that is down, a store it refuses) as one line."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as e:
        text = " ".join(str(e.message if hasattr(e, "message") else e).split())
        if "API request to" in text and "failed with exception" in text:
            cause = re.search(r"Caused by (\w+)", text)
            why = cause.group(1) if cause else text.rsplit("failed with exception", 1)[1][:80]
            raise DormantError(f"MLflow at {uri} does not answer ({why.strip()}); check the "
                               "URI, and that the server is up") from None
        raise DormantError(f"MLflow at {uri}: {text[:300]}") from None
