"""The one exception hierarchy flavorkit raises.

Internal: not part of the plugin SDK; import its public names from :mod:`flavorkit.sdk`.

Every error a user can meet derives from :class:`FlavorkitError`, so ``except FlavorkitError``
catches all of them. Inside a served MLflow model, :class:`InvalidRequest` is translated into an
``MlflowException`` with ``INVALID_PARAMETER_VALUE`` (see :func:`to_mlflow_exception`), which the
scoring server answers with HTTP 400.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "MAX_LISTED_ERRORS",
    "BackendError",
    "BackendNotFound",
    "BackendUnavailable",
    "FlavorkitError",
    "IntegrityError",
    "InvalidRequest",
    "JobCancelled",
    "ModelConfigError",
    "ModelSourceError",
    "NotAFlavorkitModel",
    "PackagingError",
    "PluginSpecError",
    "SettingsError",
    "SignatureError",
    "to_mlflow_exception",
]


class FlavorkitError(Exception):
    """Base class of every flavorkit error."""


class BackendNotFound(FlavorkitError, LookupError):
    """No backend is registered under the requested id."""

    def __init__(self, name: str, available: Sequence[str], broken: Sequence[str] = ()) -> None:
        self.name = name
        self.available = list(available)
        listed = ", ".join(sorted(self.available)) or "none"
        msg = f"unknown backend {name!r}. Installed backends: {listed}."
        if broken:
            msg += f" Plugins that failed to load: {', '.join(sorted(broken))} (see `flavorkit backends`)."
        msg += (
            " A third-party backend is added by installing its package, which declares an entry"
            " point in the 'flavorkit.backends' group; run `flavorkit backends` to list them."
        )
        super().__init__(msg)


class BackendUnavailable(FlavorkitError, ImportError):
    """The backend is installed but its runtime dependencies are missing or broken."""

    def __init__(self, name: str, reason: str, install_hint: str | None = None) -> None:
        self.name = name
        self.reason = reason
        self.install_hint = install_hint
        msg = f"backend {name!r} is not available: {reason}"
        if install_hint:
            msg += f". Fix it with: {install_hint}"
        # ImportError.__init__ sets ``name`` (the module's name) to None unless it is passed.
        super().__init__(msg, name=name)


class PluginSpecError(FlavorkitError):
    """A plugin violates the hook specification (unknown hook, missing required hook, bad return)."""


#: How many bad rows of a batch an :class:`InvalidRequest` message lists before "and N more".
MAX_LISTED_ERRORS = 10


def _describe(field: str, message: str, allowed: str | None) -> str:
    text = f"field {field!r}: {message}"
    return f"{text} (allowed: {allowed})" if allowed else text


class InvalidRequest(FlavorkitError, ValueError):
    """A request (or a packaging-time default) failed validation; names the offending field.

    ``field``, ``detail`` and ``allowed`` describe the first problem. A batch with several bad rows
    raises one error whose ``errors`` lists every bad row (see :meth:`for_rows`); otherwise
    ``errors`` is ``[self]``.
    """

    def __init__(
        self, field: str, message: str, allowed: str | None = None, *, errors: Sequence[InvalidRequest] = ()
    ) -> None:
        self.field = field
        self.detail = message
        self.allowed = allowed
        self.errors: list[InvalidRequest] = list(errors) or [self]
        if len(self.errors) == 1:
            text = "invalid request: " + _describe(field, message, allowed)
        else:
            listed = "; ".join(_describe(e.field, e.detail, e.allowed) for e in self.errors[:MAX_LISTED_ERRORS])
            text = f"invalid request: {len(self.errors)} bad rows: {listed}"
            if len(self.errors) > MAX_LISTED_ERRORS:
                text += f"; and {len(self.errors) - MAX_LISTED_ERRORS} more"
        super().__init__(text)

    @classmethod
    def for_rows(cls, errors: Sequence[InvalidRequest]) -> InvalidRequest:
        """One error for the bad rows of a batch: the first is the primary field, each is listed."""
        if not errors:
            raise ValueError("for_rows needs at least one error")
        if len(errors) == 1:
            return errors[0]
        first = errors[0]
        return cls(first.field, first.detail, first.allowed, errors=errors)


class ModelSourceError(FlavorkitError, FileNotFoundError):
    """A model source (path, Hub id, object) cannot be read or is not what the backend expects."""

    def __init__(self, source: Any, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"model source {source!s}: {reason}")


class PackagingError(FlavorkitError):
    """Writing or logging the MLflow model failed; nothing partial was left behind."""


class IntegrityError(FlavorkitError):
    """A packaged model's file (or MLmodel's flavorkit part) does not match its sha256 manifest."""

    _what = "the packaged model failed the integrity check"

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"{self._what}: " + "; ".join(self.problems))


class SignatureError(IntegrityError):
    """A packaged model is unsigned, or its signature does not verify with the trusted public key."""

    _what = "the packaged model failed the signature check"


class ModelConfigError(FlavorkitError, ValueError):
    """A packaged model's configuration (MLmodel ``model_config``) is invalid; names the field."""

    def __init__(self, field: str, message: str, allowed: str | None = None) -> None:
        self.field = field
        self.detail = message
        self.allowed = allowed
        super().__init__("invalid packaged model_config: " + _describe(field, message, allowed))


class BackendError(FlavorkitError, RuntimeError):
    """A backend broke its contract at run time (for example a request never finished)."""


class SettingsError(FlavorkitError, ValueError):
    """A setting (a command-line flag, a ``FLAVORKIT_*`` variable, a keyword) has a value it does not allow.

    ``name`` is how the user gave it (``--max-batch``, ``FLAVORKIT_VERIFY_ARTIFACTS``, ``max_batch``),
    ``value`` what was given and ``allowed`` what it takes.
    """

    def __init__(self, name: str, value: Any, problem: str, allowed: str) -> None:
        self.name = name
        self.value = value
        self.problem = problem
        self.allowed = allowed
        super().__init__(f"{name}: {value!r} {problem} (allowed: {allowed})")


class NotAFlavorkitModel(FlavorkitError, TypeError):
    """The model URI points at an MLflow model that flavorkit did not package."""


class JobCancelled(FlavorkitError):
    """A running ``flavorkit serve`` job's client went away or timed out; its generation was stopped."""


def to_mlflow_exception(err: InvalidRequest) -> Exception:
    """Translate a request error into the MlflowException the scoring server answers with 400."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE)
