"""``dormant serve`` and ``dormant token``: deletion requests as an HTTP service, over
``dormant.service``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from dormant.cli_common import DataRoot, Device, TrainSize, console
from dormant.cli_requests import StoreDir, _dataset
from dormant.errors import DormantError

token_app = typer.Typer(no_args_is_help=True,
                        help="The service's bearer tokens: create, list, revoke.")


def _service_db(store: Path):
    from dormant.requests import ModelStore
    from dormant.service.db import ServiceDB

    ModelStore(store)  # a folder that is no store is one line
    return ServiceDB(store)


def _policies(given: list[str] | None) -> dict:
    """``--policy FILE`` (the default) and ``--policy NAME=FILE``: the policies a request may
    name; each is read now, so a bad one stops the service before it listens."""
    from dormant.requests import Policy, load_policy

    out = {"default": Policy()}
    for text in given or []:
        name, sep, path = text.partition("=")
        if not sep:
            name, path = "default", text
        if not name.strip() or not path.strip():
            raise DormantError(f"--policy {text!r}: give FILE or NAME=FILE")
        out[name.strip()] = load_policy(Path(path))
    return out


def serve(
    store: StoreDir,
    host: Annotated[str, typer.Option(help="address to listen on (the loopback by default; "
                                           "put a TLS proxy in front for other hosts)")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    dataset: Annotated[str, typer.Option("--dataset", help="the dataset the store's models "
                                                           "were trained on")] = "digits",
    data_root: DataRoot = None,
    train_size: TrainSize = None,
    policy: Annotated[list[str] | None, typer.Option(
        help="policy YAML for requests that name none (FILE), or one they may name "
             "(NAME=FILE); repeat it")] = None,
    max_body: Annotated[int, typer.Option(help="largest JSON body, bytes")] = 1 << 20,
    max_upload: Annotated[int, typer.Option(help="largest model upload, bytes")] = 2 << 30,
    device: Device = "auto",
) -> None:
    """Serve the store over HTTP: the JSON API (OpenAPI at /docs) and the dashboard (/ui).
    Requests are queued in the store's service.sqlite and processed one at a time; a
    restarted service resumes what a killed one left."""
    import uvicorn

    from dormant.service import Engine, Limits, Service, create_app
    from dormant.service.app import log_to

    if not 0 <= port <= 65535:
        raise DormantError(f"--port {port} is not a port; use 1..65535")
    if max_body < 1024 or max_upload < 1024:
        raise DormantError("--max-body and --max-upload must be at least 1024 bytes")
    held = _service_db(store)
    held.hold()  # for the process's life: one service per store
    _check_port(host, port)
    pols = _policies(policy)
    svc = Service(Engine(store, _dataset(dataset, data_root, train_size), pols, device),
                  Limits(max_body=max_body, max_upload=max_upload))
    if not svc.db.tokens():
        console.print("[yellow]no tokens yet[/]: make one with dormant token create --store "
                      f"{escape(str(store))} --role admin --name NAME", highlight=False,
                      markup=True)
    log_to(store / "service.log")
    console.print(f"serving {store} on http://{host}:{port} (API docs /docs, dashboard /ui; "
                  f"policies: {', '.join(pols)}; log {store / 'service.log'})",
                  highlight=False)
    uvicorn.run(create_app(svc), host=host, port=port, log_level="warning",
                timeout_graceful_shutdown=5)


def _check_port(host: str, port: int) -> None:
    """A port already taken (or an address this machine does not have) is one line before
    the dataset is loaded."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise DormantError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose "
                           "another --port, or stop what uses it") from None


@token_app.command("create")
def token_create(
    store: StoreDir,
    role: Annotated[str, typer.Option(help="requester, reviewer or admin")],
    name: Annotated[str, typer.Option(help="whose token (shown in the ledger as who signed "
                                           "off), e.g. dpo@example.org")],
) -> None:
    """Make a token. It is printed once, with its callback secret; the store keeps a hash."""
    from dormant.service.app import log_to
    from dormant.service.tokens import create_token

    db = _service_db(store)
    text, t = create_token(db, role, name)
    log_to(store / "service.log")
    _log_token("token-created", t)
    console.print(f"token {t.id} for {t.name} ({t.role}); it is shown only now:",
                  highlight=False)
    print(text)
    console.print(f"callback secret (callbacks of its requests are signed with it): {t.secret}",
                  highlight=False)


def _log_token(event: str, t) -> None:
    import json
    import logging

    logging.getLogger("dormant.service").info(json.dumps(
        {"event": event, "token": t.id, "name": t.name, "role": t.role, "via": "cli"}))


@token_app.command("list")
def token_list(store: StoreDir) -> None:
    """Every token: id, name, role, made, revoked."""
    t = Table(title=f"tokens of {store}")
    for col in ("id", "name", "role", "created", "revoked"):
        t.add_column(col)
    for k in _service_db(store).tokens():
        t.add_row(k.id, k.name, k.role, time.strftime("%Y-%m-%d %H:%M", time.gmtime(k.created)),
                  "-" if k.revoked is None else
                  time.strftime("%Y-%m-%d %H:%M", time.gmtime(k.revoked)))
    console.print(t)


@token_app.command("revoke")
def token_revoke(store: StoreDir,
                 token_id: Annotated[str, typer.Argument(help="the token's id (token list)")]
                 ) -> None:
    """Revoke a token: every later call with it is refused."""
    from dormant.service.app import log_to

    t = _service_db(store).revoke(token_id)
    log_to(store / "service.log")
    _log_token("token-revoked", t)
    console.print(f"revoked token {t.id} ({t.name}, {t.role})", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.add_typer(token_app, name="token")
