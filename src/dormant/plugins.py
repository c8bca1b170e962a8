"""Components from outside the package: methods, models, datasets, request checks and defenses.

A plugin is a module whose import registers components with the ordinary decorators
(``register_method``, ``register_model``, ``register_source``, ``register_check``,
``register_defense``). dormant finds plugins in three ways:

- **entry points** of an installed distribution, in the groups ``dormant.methods``,
  ``dormant.models``, ``dormant.datasets``, ``dormant.checks`` and ``dormant.defenses`` (the
  value names the module, ``pkg.module`` or ``pkg.module:attr``), loaded on the first look-up
  of any registry, the way pytest loads its ``pytest11`` group;
- **``--plugin MODULE``** on the command line (repeatable; a dotted module importable from the
  working folder, or a ``.py`` file) and the study key ``plugins:``, for code that is not
  installed; ``DORMANT_PLUGINS`` (comma-separated) says the same to worker processes;
- **at run time**: Python code that calls a decorator itself.

Precedence, highest first: run time, ``--plugin``, entry points, built-ins. A component of a
higher level replaces one of a lower level under the same name (``dormant plugins`` and
``dormant methods`` show which won). Two components of the same level under one name are a
clash: a warning names both sources when the second registers, and any use of the name is
refused in that line (run time excepted: re-running a notebook cell replaces what it
registered before). A plugin that fails to import is reported in one line naming it and its
error, and everything else still works; a ``--plugin`` file or module that does not exist is
bad input (exit 2). Components registered at run time exist only in the process that
registered them, so a study that names one runs on the serial executor only.

This module imports neither torch nor any registry, so the command line can read it at start.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import warnings
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dormant.errors import DormantError

GROUPS = {"methods": "dormant.methods", "models": "dormant.models",
          "datasets": "dormant.datasets", "checks": "dormant.checks",
          "defenses": "dormant.defenses"}
"""Registry kind -> entry-point group."""

LEVELS = ("built-in", "entry point", "--plugin", "run time")
"""Lowest precedence first."""

ENV = "DORMANT_PLUGINS"


class PluginWarning(UserWarning):
    """A plugin that could not be loaded, or one that replaced a component."""


@dataclass(frozen=True)
class Source:
    """Where a registration came from: its precedence ``level`` and a name a user can find
    (``dormant.unlearn.scrub``, ``entry point tiny = tiny_plugin (tiny-plugin 0.1)``,
    ``--plugin my_method.py``, ``run time: __main__``)."""

    level: str
    name: str

    @property
    def rank(self) -> int:
        return LEVELS.index(self.level)

    def __str__(self) -> str:
        return self.name if self.level == "built-in" else f"{self.level} {self.name}"


@dataclass
class Plugin:
    """One plugin dormant tried to load, for ``dormant plugins``."""

    source: Source
    registered: list[str]
    error: str | None = None


_sources: dict[str, dict[str, Source]] = {kind: {} for kind in GROUPS}
_clashes: dict[str, dict[str, str]] = {kind: {} for kind in GROUPS}
_loading: list[Source] = []
_plugins: dict[str, Plugin] = {}
_requested: list[str] = []
_entry_points_loaded = False


def _origin(module: str | None) -> Source:
    module = module or "__main__"  # code exec'd without a module name
    # the package's own modules first: a plugin's import may be what imports them
    if module == "dormant" or module.startswith("dormant."):
        return Source("built-in", module)
    if _loading:
        return _loading[-1]
    return Source("run time", module)


def claim(kind: str, name: str, table: MutableMapping, value, module: str | None) -> None:
    """Put ``value`` into registry ``table`` under ``name`` unless a component of higher
    precedence holds the name (see the module docstring); every registry decorator calls
    this. ``module`` is the registering code's module, which says its level when no plugin
    is being loaded."""
    new = _origin(module)
    old = _sources[kind].get(name) if name in table else None
    if old is not None and old != new:
        if old.rank > new.rank:
            return
        if old.rank == new.rank and new.level != "run time":
            _clashes[kind][name] = (f"{kind[:-1]} {name!r} from {new} clashes with the one "
                                    f"from {old}; rename one of them")
            warnings.warn(_clashes[kind][name], PluginWarning, stacklevel=3)
            return
        if old.level == "built-in":
            warnings.warn(f"{new} replaces the built-in {kind[:-1]} {name!r} ({old})",
                          PluginWarning, stacklevel=3)
    table[name] = value
    _sources[kind][name] = new
    if _loading and new == _loading[-1]:
        _plugins[new.name].registered.append(f"{kind[:-1]} {name}")


def refuse_clash(kind: str, name: str) -> None:
    """Raise the one line of a clash under ``name``: neither component is used."""
    if name in _clashes[kind]:
        raise DormantError(_clashes[kind][name])


def stranded(used: dict[str, set[str]]) -> list[str]:
    """Those of ``used`` (kind -> names a study names) registered at run time: a worker
    process never sees them."""
    return [f"{kind[:-1]} {name!r} ({_sources[kind][name]})" for kind, names in used.items()
            for name in sorted(names)
            if name in _sources[kind] and _sources[kind][name].level == "run time"]


def source(kind: str, name: str) -> Source | None:
    """Where registry ``kind``'s component ``name`` came from (None: never registered)."""
    return _sources[kind].get(name)


@contextmanager
def _as(src: Source) -> Iterator[Plugin]:
    plugin = _plugins.setdefault(src.name, Plugin(src, []))
    _loading.append(src)
    try:
        yield plugin
    finally:
        _loading.pop()


def _failed(plugin: Plugin, e: BaseException) -> None:
    text = " ".join(str(e).split())
    plugin.error = f"{type(e).__name__}: {text}" if text else type(e).__name__
    warnings.warn(f"plugin {plugin.source} failed to load ({plugin.error}); everything else "
                  "still works", PluginWarning, stacklevel=4)


def _is_file(target: str) -> bool:
    return target.endswith(".py") or os.sep in target or "/" in target


def _target(target: str) -> str:
    """``target`` as every process can load it: a file by its absolute path, a dotted module
    as given (found from the working folder first, as ``python -m`` finds it). A target that
    does not exist is bad input."""
    if _is_file(target):
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise DormantError(f"--plugin {target}: no such file {path}; give a .py file or a "
                               "dotted module name")
        return str(path)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    top = target.partition(":")[0].split(".")[0]
    if not top.isidentifier() or importlib.util.find_spec(top) is None:
        raise DormantError(f"--plugin {target}: no module {top!r} importable from {cwd}; "
                           "install it, or give the path of its .py file")
    return target


def _import(target: str):
    """A module by dotted name or a ``.py`` file, under a module name derived from the
    file's (the same on every machine, so a method's code revision is too)."""
    if _is_file(target):
        path = Path(target)
        name = f"dormant_plugin_{path.stem}"
        if name in sys.modules:
            if Path(getattr(sys.modules[name], "__file__", "") or "") != path:
                raise DormantError(f"another plugin file named {path.name} is loaded already "
                                   f"({sys.modules[name].__file__}); rename one of them")
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # a method's code revision finds its source through this
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


def use(*targets: str) -> None:
    """Load the ``--plugin`` modules ``targets`` (each once a process), and have worker
    processes load them too. A module that fails to import is reported, not raised; one that
    does not exist raises a ``DormantError``."""
    for target in (t.strip() for t in targets):
        if not target:
            continue
        target = _target(target)
        if target in _requested:
            continue
        _requested.append(target)
        os.environ[ENV] = ",".join(_requested)
        with _as(Source("--plugin", target)) as plugin:
            try:
                _import(target)
            except Exception as e:  # noqa: BLE001 - one line, and the rest still works
                _failed(plugin, e)


def requested() -> tuple[str, ...]:
    """The ``--plugin`` modules this process loaded, for worker processes to load."""
    return tuple(_requested)


def load() -> None:
    """Load every installed entry point and every module ``DORMANT_PLUGINS`` names, once a
    process; each registry's look-ups call this first."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True  # before loading: a plugin may look a registry up
    use(*os.environ.get(ENV, "").split(","))
    seen = set()  # a module named in several groups loads (and fails) once
    for group in GROUPS.values():
        for ep in importlib.metadata.entry_points(group=group):
            if ep.value in seen:
                continue
            seen.add(ep.value)
            dist = f" ({ep.dist.name} {ep.dist.version})" if ep.dist else ""
            with _as(Source("entry point", f"{ep.group}:{ep.name} = {ep.value}{dist}")) as p:
                try:
                    ep.load()
                except Exception as e:  # noqa: BLE001 - one line, and the rest still works
                    _failed(p, e)


def plugins() -> list[Plugin]:
    """Every plugin this process tried to load, in load order."""
    load()
    return list(_plugins.values())
