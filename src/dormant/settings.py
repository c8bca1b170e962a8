"""The one settings layer: every settings object is a pydantic model validated declaratively
(``Field``, ``Literal``), files are read by one loader and every validation error becomes one
line through one formatter.

- ``Settings``: the base of every settings model: frozen, unknown keys are errors.
- ``validate(cls, data, where)``: ``cls`` from ``data``, or a ``DormantError`` naming the key.
- ``@one_line(where)``: a settings class whose direct construction fails in one such line.
- ``load_yaml(path, what)``: a YAML mapping from a UTF-8 file; empty files, duplicate keys
  and anything but a mapping are refused by name. YAML tags that build objects never run.
- ``apply_sets(data, ["a.b=1", ...])``: the ``--set key.sub=value`` overrides, values parsed
  as YAML scalars (``1e-4``, ``[0, 5]``, ``none``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    WrapValidator,
    field_validator,
)

from dormant.errors import DormantError

T = TypeVar("T")


INT_LIMIT = 2**63 - 1
"""The largest integer any setting takes: torch and numpy hold counts, ids and seeds in 64
bits, so a larger one could only fail later, in the middle of the work."""


def _int_in_range(v: Any) -> Any:
    for x in (v.values() if isinstance(v, dict) else v if isinstance(v, list | tuple) else [v]):
        if isinstance(x, dict | list | tuple):
            _int_in_range(x)
        elif isinstance(x, int) and not isinstance(x, bool) and abs(x) > INT_LIMIT:
            # str() of an integer of more than 4,300 digits raises, so its size is in bits
            raise ValueError(f"must be at most {INT_LIMIT:,} in size, got an integer of "
                             f"{x.bit_length()} bits")
    return v


class Settings(BaseModel):
    """Frozen, an unknown key is an error that names it, and so is a number that is NaN or
    infinite (every float field of every subclass) or an integer beyond 64 bits."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _ints_fit(cls, v: Any) -> Any:
        return _int_in_range(v)


def _listify(v: Any) -> list:
    return v if isinstance(v, list) else [v]


def _non_empty(v: list) -> list:
    if not v:
        raise ValueError("must not be empty: the grid would have no cells")
    return v


Axis = Annotated[list[T], BeforeValidator(_listify), AfterValidator(_non_empty)]
"""One axis of a study's grid: a non-empty list of ``T``; a scalar is a list of one."""


def choice(noun: str, *choices: str) -> Any:
    """``Literal[choices]`` whose error says ``unknown NOUN 'x'; use a, b, c``."""

    def check(v: Any, handler: Any) -> Any:
        try:
            return handler(v)
        except ValidationError:
            raise ValueError(f"unknown {noun} {v!r}; use {', '.join(choices)}") from None

    return Annotated[Literal[choices], WrapValidator(check)]


_SHOWS_INPUT = {"greater_than", "greater_than_equal", "less_than", "less_than_equal",
                "literal_error", "int_parsing", "int_from_float", "float_parsing",
                "bool_parsing", "finite_number"}


def error_line(e: ValidationError, where: str, flags: dict[str, str] | None = None) -> str:
    """One line for the first error: ``WHERE: key 'a.b': message``, or ``--flag: message``
    when ``flags`` maps the key's dotted path to the command-line flag that set it."""
    errs = e.errors()
    # a union (a method entry is a name or a mapping) reports its mapping's complaint
    err = next((x for x in errs if len(x["loc"]) > 1 and not isinstance(x["loc"][-1], str)
                or "MethodEntry" in x["loc"]), errs[0])
    loc = [str(p) for p in err["loc"] if p not in ("MethodEntry", "str")
           and not str(p).startswith(("function-", "list[", "dict["))]
    msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key; check its spelling against the documented keys"
    if err["type"] == "finite_number":
        msg = "must be a finite number"
    if err["type"] in _SHOWS_INPUT and not isinstance(err.get("input"), (dict, list)):
        if err["type"] == "greater_than" and err.get("ctx", {}).get("gt") == 0:
            msg = "must be positive"
        msg = f"{msg}, got {err['input']!r}"
    dotted = ".".join(loc)
    for i in range(len(loc), 0, -1):
        flag = (flags or {}).get(".".join(loc[:i]))
        if flag:
            return f"{flag}: {msg}"
    # a check of a whole mapping: name the flags that set keys inside it
    inside = [f for k, f in (flags or {}).items() if dotted and k.startswith(dotted + ".")]
    if inside:
        return f"{where}: key {dotted!r} (with {', '.join(dict.fromkeys(inside))}): {msg}"
    return f"{where}: key {dotted!r}: {msg}" if dotted else f"{where}: {msg}"


def validate(cls: type[T], data: Any, where: str, flags: dict[str, str] | None = None) -> T:
    """``cls`` built from ``data`` (a model or a pydantic dataclass), or one clear line."""
    try:
        if isinstance(cls, type) and issubclass(cls, BaseModel):
            return cls.model_validate(data)
        from pydantic import TypeAdapter

        return TypeAdapter(cls).validate_python(data)
    except ValidationError as e:
        raise DormantError(error_line(e, where, flags)) from None


def one_line(where: str):
    """Class decorator: building the model or pydantic dataclass directly raises one
    ``DormantError`` line naming ``where`` and the key (``neural cleanse: key 'epochs': ...``)
    instead of pydantic's multi-line ValidationError. Nested validation is unchanged."""

    def deco(cls):
        init = cls.__init__
        names = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) \
            else []

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            if args and len(args) <= len(names):  # an error then names the field, not "1"
                kwargs = {**dict(zip(names, args, strict=False)), **kwargs}
                args = ()
            try:
                init(self, *args, **kwargs)
            except ValidationError as e:
                raise DormantError(error_line(e, where)) from None

        cls.__init__ = __init__
        return cls

    return deco


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice (PyYAML keeps the last)."""


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise DormantError(f"key {key!r} appears twice (line {mark.line + 1}); "
                               "keep one")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
# YAML 1.2 floats: PyYAML (YAML 1.1) reads 1e-4 as the string '1e-4', wanting 1.0e-4
_UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"""^(?:
    [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)? | [-+]?(?:[0-9][0-9_]*)[eE][-+]?[0-9]+
    | \.[0-9_]+(?:[eE][-+]?[0-9]+)? | [-+]?\.(?:inf|Inf|INF) | \.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file, or one line saying what is wrong with it."""
    path = Path(path)
    if not path.exists():
        raise DormantError(f"{what} {path} does not exist")
    if not path.is_file():
        raise DormantError(f"{what} {path} is not a file")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DormantError(f"{what} {path} is not UTF-8 text (byte {e.start}); save it as "
                           "UTF-8") from None


MAX_VALUES = 100_000
"""The most values a settings text may hold once its aliases are expanded: every walk over
it (NaN checks, copies, validation) expands them, so a few lines of nested aliases (a
"billion laughs") would otherwise hang the command."""


def _expanded(value: Any, memo: dict[int, int]) -> int:
    """How many values ``value`` holds with every alias expanded; each object counted once
    per distinct node, so this walk itself stays linear in the text."""
    if not isinstance(value, dict | list):
        return 1
    if id(value) not in memo:
        memo[id(value)] = 0  # a cycle counts nothing more
        items = value.values() if isinstance(value, dict) else value
        memo[id(value)] = 1 + sum(min(_expanded(v, memo), MAX_VALUES + 1) for v in items)
    return memo[id(value)]


def parse_yaml(text: str, where: str) -> Any:
    data = _parse_yaml(text, where)
    if _expanded(data, {}) > MAX_VALUES:
        raise DormantError(f"{where} holds more than {MAX_VALUES:,} values once its aliases "
                           "(*name) are expanded; no setting needs that many")
    return data


def _parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except DormantError as e:
        raise DormantError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0]
        raise DormantError(f"{where} is not valid YAML: {first}") from None
    except RecursionError:
        raise DormantError(f"{where} nests lists or mappings too deeply to read; no setting "
                           "needs more than a few levels") from None
    except ValueError as e:  # an integer of more than 4,300 digits
        raise DormantError(f"{where}: {str(e).split(';')[0]}; no setting takes such a "
                           "number") from None


def load_yaml(path: Path, what: str = "study file") -> dict:
    """A non-empty YAML mapping from a UTF-8 file."""
    data = parse_yaml(read_text(path, what), f"{what} {path}")
    if data is None:
        raise DormantError(f"{what} {path} is empty; give at least one key (or no file)")
    if not isinstance(data, dict):
        raise DormantError(f"{what} {path} must be a mapping of keys to values")
    _check_finite(data, f"{what} {path}")
    return data


_NOT_FINITE = {"nan", "inf", "infinity"}


def not_finite(value: Any) -> bool:
    """A float that is NaN or infinite, or text a float field would read as one ('nan',
    '-inf', 'Infinity': pydantic's lax mode turns them into floats)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, str) and value.strip().lower().lstrip("+-") in _NOT_FINITE


def _check_finite(value: Any, where: str, path: str = "") -> None:
    """NaN and infinity are refused wherever a number is read (YAML spells them .nan, .inf)."""
    if not_finite(value):
        raise DormantError(f"{where}: key {path!r}: {value} is not a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, where, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(v, where, f"{path}.{i}")


def apply_sets(data: dict, sets: list[str] | None) -> dict:
    """``data`` with each ``key.sub=value`` applied (a new dict; ``data`` is not changed)."""
    out = _copy(data)
    for item in sets or []:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip() or any(not p for p in key.strip().split(".")):
            raise DormantError(f"--set {short(item)!r}: write KEY=VALUE, e.g. --set "
                               "hparams.finetune.lr=1e-4")
        value = parse_yaml(raw, f"--set {short(item)!r}") if raw.strip() else ""
        _check_finite(value, "--set", key.strip())
        put(out, key.strip(), value)
    return out


def short(text: str, n: int = 60) -> str:
    """``text`` cut to ``n`` characters for an error line (an argument may be megabytes)."""
    return text if len(text) <= n else f"{text[:n]}... ({len(text):,} characters)"


def put(data: dict, key: str, value: Any) -> None:
    """Set the dotted ``key`` of ``data`` in place, making the mappings on its way."""
    node = data
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            node[p] = nxt
        node = nxt
    node[parts[-1]] = value


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
