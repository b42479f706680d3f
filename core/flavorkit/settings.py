"""Every ``FLAVORKIT_*`` environment variable flavorkit reads, and the settings of ``flavorkit serve``.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).

One table, :data:`VARIABLES`, declares each variable (name, type, default, meaning); code reads
them only through :func:`env_flag` and :func:`env_path`, or through :class:`ServeSettings`. Every
boolean follows one grammar: ``1``, ``true``, ``yes``, ``on`` turn it on, ``0``, ``false``, ``no``,
``off`` turn it off (any case, surrounding spaces ignored), unset or empty leaves the default, and
anything else is a :class:`~flavorkit.errors.SettingsError` naming the variable. Code that sets
variables (any, not only ``FLAVORKIT_*``) for the length of a block does it through :func:`scoped_env`.

The serve settings are one model: :class:`ServeSettings` holds each setting's default, bounds and
description; ``flavorkit serve`` generates its flags from it, and each setting is also read from
``FLAVORKIT_<NAME>`` (:meth:`ServeSettings.load`, with pydantic-settings).

A kernel module: it imports the standard library, pydantic and :mod:`flavorkit.errors` only.
pydantic-settings is imported when serve settings are loaded, because this module ships inside
every packaged model (the loader reads ``FLAVORKIT_VERIFY_ARTIFACTS``), whose environment has
pydantic but not pydantic-settings.
"""

from __future__ import annotations

import contextlib
import functools
import os
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator
from pydantic.fields import FieldInfo

from flavorkit.errors import SettingsError

__all__ = [
    "ENV_PREFIX",
    "FALSE",
    "TRUE",
    "VARIABLES",
    "ServeSettings",
    "Variable",
    "allowed_values",
    "check_value",
    "cpu_threads",
    "env_flag",
    "env_path",
    "env_var",
    "scoped_env",
    "usable_cores",
]

#: The spellings of a true boolean, then of a false one (compared lower-cased, stripped).
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")
_BOOLEAN = f"{', '.join(TRUE)} to turn it on; {', '.join(FALSE)} to turn it off"

#: Every serve setting ``name`` is also read from ``FLAVORKIT_<NAME>``.
ENV_PREFIX = "FLAVORKIT_"


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, type and default as the user guide shows them, and what it does."""

    name: str
    type: str
    default: str
    meaning: str


# -- the serve settings -----------------------------------------------------------------------------


#: Key files already read, by path and version (size and mtime; a pipe has none), so that a file is read
#: once however many times the settings are checked, and ``--api-key-file <(command)`` works.
_KEY_FILES: dict[tuple[str, int, int], list[str]] = {}


def _read_keys(path: Path) -> list[str]:
    """The keys in ``path``, one per line; raise ``ValueError`` (a settings error) if it has none or cannot be read."""
    try:
        info = path.stat()
        version = (str(path), info.st_size, info.st_mtime_ns) if path.is_file() else (str(path), -1, -1)
        if version in _KEY_FILES:
            return list(_KEY_FILES[version])
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the key file {str(path)!r}: {exc}") from None
    keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise ValueError(f"the key file {str(path)!r} holds no key (one per line; # starts a comment)")
    for key in keys:
        if any(c.isspace() for c in key):
            raise ValueError(f"the key file {str(path)!r} has a key with a space in it; one key per line")
        if not key.isascii():
            raise ValueError(f"the key file {str(path)!r} has a key that is not ASCII (an HTTP header carries ASCII)")
    _KEY_FILES[version] = keys
    return list(keys)


_SECONDS: dict[str, JsonValue] = {"metavar": "SECONDS"}


class ServeSettings(BaseModel):
    """The settings of ``flavorkit serve`` and ``create_app``: defaults, bounds and help in one place.

    Build it with :meth:`load` (keywords over ``FLAVORKIT_*`` variables over defaults) or directly
    (defaults and keywords only); either way every value is checked once, here.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(
        default="127.0.0.1",
        description="address to bind (the default is loopback only)",
        json_schema_extra={"metavar": "ADDRESS"},
    )
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port to listen on")
    served_model_name: str | None = Field(
        default=None,
        description="the name clients pass as `model`; unset: the registered model's name or the folder's name",
        json_schema_extra={"metavar": "NAME"},
    )
    api_key: str | None = Field(
        default=None,
        repr=False,
        description="require `Authorization: Bearer KEY` on /v1/* and /invocations",
        json_schema_extra={"metavar": "KEY"},
    )
    api_key_file: Path | None = Field(
        default=None,
        description="read API keys from this file, one per line (blank lines and # comments skipped); "
        "any of them, or --api-key, is accepted",
        json_schema_extra={"metavar": "FILE"},
    )
    trusted_key: Path | None = Field(
        default=None,
        description="verify the model's signature with this EC public key (PEM) before loading anything "
        "(needs flavorkit[signing])",
        json_schema_extra={"metavar": "PEM"},
    )
    max_batch: int = Field(default=8, ge=1, description="most requests generating at once")
    batching: Literal["continuous", "request"] = Field(
        default="continuous",
        description="continuous: requests join running batches between decoding steps (when the backend can); "
        "request: each batch of queued requests runs to the end before the next starts",
    )
    join_wait: float = Field(
        default=0.1,
        ge=0,
        allow_inf_nan=False,
        description="seconds a request arriving mid-batch may wait for the clients of rows that just finished, "
        "to join with them",
        json_schema_extra=_SECONDS,
    )
    batch_wait: float = Field(
        default=0.02,
        ge=0,
        allow_inf_nan=False,
        description="seconds an idle worker waits for the clients of the last batch before it starts a smaller one",
        json_schema_extra=_SECONDS,
    )
    max_queue: int = Field(default=64, ge=1, description="most waiting requests; more get 429")
    request_timeout: float = Field(
        default=600.0,
        gt=0,
        allow_inf_nan=False,
        description="seconds before a request is cancelled and answered 504",
        json_schema_extra=_SECONDS,
    )
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1, description="largest request body; larger ones get 413")
    drain_timeout: float = Field(
        default=30.0,
        ge=0,
        allow_inf_nan=False,
        description="seconds SIGTERM waits for running requests before it cancels them",
        json_schema_extra=_SECONDS,
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="server log level"
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="CPU threads per decoding step of the model, over its packaged option; unset: the packaged "
        "option, else the backend's default (every usable core)",
        json_schema_extra={"metavar": "N"},
    )

    @field_validator("served_model_name", "api_key", "api_key_file", "trusted_key", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        """An empty value (``FLAVORKIT_API_KEY=``) means unset, as for every other variable."""
        if isinstance(value, str) and not value.strip():
            return None
        return value.strip() if isinstance(value, str) else value

    @field_validator("trusted_key", "api_key_file")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        """``~`` in a file's path is the home folder."""
        return value.expanduser() if value is not None else None

    @field_validator("api_key_file")
    @classmethod
    def _readable_keys(cls, value: Path | None) -> Path | None:
        """The key file exists and holds at least one key, so a typo never leaves the API open."""
        if value is not None:
            _read_keys(value)
        return value

    def api_keys(self) -> tuple[str, ...]:
        """Every accepted API key: ``api_key``, then the lines of ``api_key_file`` (empty: the API is open)."""
        keys = [self.api_key] if self.api_key else []
        if self.api_key_file is not None:
            keys += _read_keys(self.api_key_file)
        return tuple(dict.fromkeys(keys))

    @classmethod
    def load(cls, names: Mapping[str, str] | None = None, **values: Any) -> ServeSettings:
        """``values``, then ``FLAVORKIT_<NAME>`` variables, then the defaults; a bad one raises ``SettingsError``.

        ``names`` says how the caller calls each of ``values`` in an error (``--max-batch`` for a
        flag); by default the keyword itself. A bad variable is named as the variable.
        """
        _refuse_unknown(values)
        try:
            return _from_environment()(**values)
        except ValidationError as exc:
            raise _settings_error(exc, values, names or {}) from None

    def updated(self, **values: Any) -> ServeSettings:
        """A copy with ``values`` changed, checked like the rest; a bad one raises ``SettingsError``."""
        _refuse_unknown(values)
        try:
            return ServeSettings(**{**self.model_dump(), **values})
        except ValidationError as exc:
            raise _settings_error(exc, values, {}) from None

    @classmethod
    def of(cls, settings: ServeSettings | None, **values: Any) -> ServeSettings:
        """``settings`` (or the defaults, without reading the environment) with ``values`` changed."""
        base = settings if settings is not None else cls()
        return base.updated(**values) if values else base


def _refuse_unknown(values: Mapping[str, Any]) -> None:
    unknown = sorted(set(values) - set(ServeSettings.model_fields))
    if unknown:
        known = ", ".join(ServeSettings.model_fields)
        raise TypeError(f"unknown serve setting {unknown[0]!r}; the settings are: {known}")


@functools.cache
def _from_environment() -> type[ServeSettings]:
    """:class:`ServeSettings` that also reads ``FLAVORKIT_<NAME>`` (pydantic-settings, imported now)."""
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class ServeEnvironment(BaseSettings, ServeSettings):  # type: ignore[misc]
        model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    return ServeEnvironment


def env_var(setting: str) -> str:
    """The environment variable of serve setting ``setting``: ``FLAVORKIT_MAX_BATCH`` for ``max_batch``."""
    return ENV_PREFIX + setting.upper()


def _settings_error(exc: ValidationError, values: Mapping[str, Any], names: Mapping[str, str]) -> SettingsError:
    """The first problem of ``exc``, naming the keyword (or flag) it came from, else its variable."""
    error = exc.errors()[0]
    setting = str(error["loc"][0]) if error["loc"] else ""
    field = ServeSettings.model_fields[setting]
    name = names.get(setting, setting) if setting in values else env_var(setting)
    return SettingsError(name, error.get("input"), _problem(error), allowed_values(field))


def _problem(error: Mapping[str, Any]) -> str:
    """What is wrong with a value, from pydantic's error type."""
    kind = str(error["type"])
    if kind.startswith("int_"):
        return "is not a whole number"
    if kind.startswith("float_"):
        return "is not a number"
    if kind.startswith(("greater_than", "less_than", "finite_number")):
        return "is out of range"
    if kind == "literal_error":
        return "is not one of the choices"
    return f"is not allowed ({error['msg']})"


# -- what a setting allows, and checking one value ------------------------------------------------------


def _choices(annotation: Any) -> tuple[Any, ...] | None:
    """The values of a ``Literal`` annotation, else None."""
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else None


def _base_type(annotation: Any) -> Any:
    """``X`` for ``X | None``, else the annotation itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def allowed_values(field: FieldInfo) -> str:
    """What a setting allows, in words: ``whole number, at least 1``, ``one of: continuous, request``."""
    choices = _choices(field.annotation)
    if choices is not None:
        return "one of: " + ", ".join(str(c) for c in choices)
    base = _base_type(field.annotation)
    kind = {int: "whole number", float: "number", Path: "path"}.get(base, "text")
    low = high = ""
    for rule in field.metadata:
        if isinstance(rule, annotated_types.Ge):
            low = f"at least {rule.ge}"
        elif isinstance(rule, annotated_types.Gt):
            low = f"above {rule.gt}"
        elif isinstance(rule, annotated_types.Le):
            high = f"at most {rule.le}"
        elif isinstance(rule, annotated_types.Lt):
            high = f"below {rule.lt}"
    if low.startswith("at least") and high.startswith("at most"):
        bounds = f"from {low.removeprefix('at least ')} to {high.removeprefix('at most ')}"
    else:
        bounds = " and ".join(part for part in (low, high) if part)
    return f"{kind}, {bounds}" if bounds else kind


def check_value(setting: str, value: Any, name: str | None = None) -> Any:
    """``value`` converted and checked as serve setting ``setting`` allows; else ``SettingsError`` naming ``name``.

    Checked by the settings model itself (the other settings at their defaults), so a flag runs
    the same validators as a keyword or a variable: a key file must exist and hold a key.
    """
    try:
        return getattr(ServeSettings(**{setting: value}), setting)
    except ValidationError as exc:
        problem = _problem(exc.errors()[0])
        raise SettingsError(
            name or setting, value, problem, allowed_values(ServeSettings.model_fields[setting])
        ) from None


# -- the table of every variable ------------------------------------------------------------------------


def _serve_variable(setting: str, field: FieldInfo) -> Variable:
    default = "unset" if field.default is None else str(field.default)
    return Variable(env_var(setting), allowed_values(field), default, f"`flavorkit serve`: {field.description}")


_GENERAL = (
    Variable(
        "FLAVORKIT_VERIFY_ARTIFACTS",
        "boolean",
        "true",
        "check a packaged model's files against its sha256 manifest when it loads; false skips it "
        "(for pre-verified read-only mounts; the configuration is still validated)",
    ),
    Variable(
        "FLAVORKIT_TRUSTED_KEY",
        "path",
        "unset",
        "an EC public key (PEM): loading, `flavorkit verify` and `flavorkit serve` refuse a model not signed with it",
    ),
    Variable(
        "FLAVORKIT_STRICT_PLUGINS",
        "boolean",
        "false",
        "a plugin that fails to load is an error, not a warning (for CI)",
    ),
    Variable("FLAVORKIT_PROGRESS", "boolean", "true", "progress lines on stderr during conversions and exports"),
    Variable(
        "FLAVORKIT_THREADS",
        allowed_values(ServeSettings.model_fields["threads"]),
        "unset",
        "CPU threads per decoding step when a model loads (`flavorkit serve --threads`, `mlflow models serve`, "
        "Spark), over the thread option it was packaged with (each backend names its own); unset: that option, else "
        "every usable core",
    ),
    Variable(
        "FLAVORKIT_CACHE",
        "path",
        "`$XDG_CACHE_HOME/flavorkit`, else `~/.cache/flavorkit`",
        "where converted models and build scratch are kept",
    ),
)

#: Every ``FLAVORKIT_*`` variable flavorkit reads, by name. A serve setting whose variable is declared
#: above (``trusted_key``) shares that row.
VARIABLES: dict[str, Variable] = {v.name: v for v in _GENERAL}
for _setting, _field in ServeSettings.model_fields.items():
    VARIABLES.setdefault(env_var(_setting), _serve_variable(_setting, _field))
del _setting, _field


def _declared(name: str, type: str) -> Variable:
    variable = VARIABLES.get(name)
    if variable is None or variable.type != type:
        raise KeyError(f"{name} is not a declared {type} variable (see flavorkit.settings.VARIABLES)")
    return variable


def _raw(name: str) -> str | None:
    """The variable's value, stripped; None when it is unset or empty."""
    value = os.environ.get(name, "").strip()
    return value or None


def env_flag(name: str) -> bool:
    """The boolean variable ``name``: its default when unset or empty; ``SettingsError`` outside the grammar."""
    variable = _declared(name, "boolean")
    raw = _raw(name)
    if raw is None:
        return variable.default == "true"
    word = raw.lower()
    if word in TRUE:
        return True
    if word in FALSE:
        return False
    raise SettingsError(name, os.environ.get(name), "is not a boolean", _BOOLEAN)


def env_path(name: str) -> Path | None:
    """The path variable ``name`` (``~`` expanded), or None when it is unset or empty."""
    _declared(name, "path")
    raw = _raw(name)
    return Path(raw).expanduser() if raw is not None else None


@contextlib.contextmanager
def scoped_env(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set the variables in ``values`` for the block, then put each back exactly as it was.

    A ``None`` value unsets its variable for the block. Afterwards, also when the block raises (or
    setting a later value does), a variable that was unset before is removed and one that was set
    gets its old value back, whatever the block did to it; variables not in ``values`` are left
    alone, so an empty mapping changes nothing. It changes ``os.environ`` for the whole process:
    other threads see the values while the block runs.
    """
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            _put_env(name, value)
        yield
    finally:
        for name, old in saved.items():
            _put_env(name, old)


def _put_env(name: str, value: str | None) -> None:
    """Set the variable ``name`` to ``value``, or remove it for None."""
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def cpu_threads(packaged: int | None = None) -> int | None:
    """Threads per decoding step for a model being loaded: ``FLAVORKIT_THREADS`` over the ``packaged`` option.

    Backends call this in their ``load`` hook, so ``flavorkit serve --threads`` (which sets the
    variable) and a deployment's environment can tune a model without packaging it again. None
    leaves the choice to the backend's default. A bad value is a ``SettingsError`` naming the variable.
    """
    raw = _raw("FLAVORKIT_THREADS")
    if raw is None:
        return packaged
    threads: int = check_value("threads", raw, "FLAVORKIT_THREADS")
    return threads


def usable_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPU cores this process may use: its affinity, capped by a cgroup CPU quota (a container's limit).

    A container limited to 2 CPUs on a 16-core host still sees 16 cores in its affinity; 16 threads
    per step there would be throttled by the quota and decode slower than 2. The quota is read from
    cgroup v2 (``cpu.max``) or v1 (``cpu/cpu.cfs_quota_us`` over ``cpu.cfs_period_us``) and rounded
    down, at least 1.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup)
    if quota is not None:
        cores = min(cores, int(quota))
    return max(1, cores)


def _cgroup_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup CPU quota under ``root`` (v2, then v1); None when there is none or no cgroup."""

    def read(path: Path) -> list[str] | None:
        try:
            return path.read_text(encoding="ascii").split()
        except (OSError, UnicodeDecodeError):
            return None

    v2 = read(root / "cpu.max")  # "max 100000" or "150000 100000"
    if v2 is not None:
        if len(v2) == 2 and v2[0] != "max" and v2[0].isdigit() and v2[1].isdigit() and int(v2[1]) > 0:
            return int(v2[0]) / int(v2[1])
        return None
    for folder in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        quota, period = read(root / folder / "cpu.cfs_quota_us"), read(root / folder / "cpu.cfs_period_us")
        if quota and period:
            try:
                q, p = int(quota[0]), int(period[0])
            except ValueError:
                return None
            return q / p if q > 0 and p > 0 else None  # -1: no quota
    return None
