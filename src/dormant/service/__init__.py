"""Deletion requests as an HTTP service (``dormant serve``): a JSON API that privacy systems
call, a server-rendered dashboard with sign-off, bearer tokens with roles, signed callbacks,
and a queue that survives ``kill -9``. A front door to the request engine, not a second
path: every request runs through ``dormant.requests.process_request`` under the store's lock.
Needs the ``service`` extra (FastAPI, uvicorn, Jinja2)."""

from dormant.service.app import create_app
from dormant.service.state import Limits, Service
from dormant.service.worker import Engine

__all__ = ["Engine", "Limits", "Service", "create_app"]
