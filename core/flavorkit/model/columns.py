"""The top-level request fields MLflow's schema enforcement drops before ``predict``, so they can be refused.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).

MLflow keeps only the signature's columns and drops the others before the model sees the input,
logging "Found extra inputs in the model input that are not defined in the model signature:
`[...]`. These inputs will be ignored." from ``mlflow.models.utils``. No MLflow API hands a pyfunc
model its raw input, so a :class:`logging.Filter` on that logger records the names for the
prediction that is running (MLflow's prediction context, set around schema enforcement and
``predict`` in the same thread), and the pyfunc wrapper refuses them as OpenAI does, naming the
field. The filter changes no record; see docs/architecture.md section 4 for why this design and
what it cannot see.
"""

from __future__ import annotations

import ast
import logging
import re
import threading
from typing import Any

from flavorkit.errors import InvalidRequest
from flavorkit.schema import IGNORED_FIELDS, ChatRequest, TextRequest, unknown_fields_error
from flavorkit.signatures import CALL_PARAMS, CHAT

__all__ = ["dropped_columns", "refuse_dropped_columns", "watch_dropped_columns"]

#: The logger and message of MLflow's notice (``mlflow.models.utils._enforce_schema``, MLflow 3.x).
LOGGER = "mlflow.models.utils"
_NOTICE = re.compile(r"Found extra inputs in the model input that are not defined in the model signature: `(\[.*\])`")
#: Its notices for ``params`` it drops (``_enforce_params_schema``): names outside the model's params
#: schema, or every name when the model (packaged before flavorkit declared params) has none.
_PARAMS_NOTICES = (
    re.compile(r"^Unrecognized params (\[.*\]) are ignored for inference"),
    re.compile(r"This model does not define a params schema\. Ignoring provided params: (\[.*\])"),
)


def _prediction_context() -> Any:
    from mlflow.pyfunc.context import get_prediction_context

    return get_prediction_context()


class _DroppedColumns(logging.Filter):
    """Records the names in MLflow's "Found extra inputs" notice, per thread, with the prediction context."""

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        """Remember the dropped names (columns, and ``params.*``); always let the record through."""
        message = record.getMessage()
        match = _NOTICE.search(message)
        prefix = ""
        if match is None:
            match = next((m for m in (p.search(message) for p in _PARAMS_NOTICES) if m), None)
            prefix = "params."
        if match:
            context = _prediction_context()
            if context is not None:  # outside a pyfunc prediction nobody will ask
                try:
                    names = [str(n) for n in ast.literal_eval(match.group(1))]
                except (ValueError, SyntaxError):
                    names = [match.group(1)]
                # A name may hold a lone surrogate; the error message must still be valid text.
                names = [prefix + n.encode("utf-8", "backslashreplace").decode("utf-8") for n in sorted(names)]
                seen = getattr(self.local, "seen", None)
                if seen is not None and seen[0] is context:  # both kinds in one prediction: keep both
                    names = [*seen[1], *names]
                self.local.seen = (context, names)
        return True


_FILTER = _DroppedColumns()


def watch_dropped_columns() -> None:
    """Start recording the fields MLflow drops (idempotent); call before the first prediction."""
    logger = logging.getLogger(LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


def dropped_columns() -> list[str]:
    """The fields MLflow dropped from the input of the prediction running in this thread; then forget them."""
    seen = getattr(_FILTER.local, "seen", None)
    _FILTER.local.seen = None
    if seen is None:
        return []
    context, names = seen
    # A notice from an earlier prediction whose enforcement failed afterwards belongs to another context.
    return list(names) if context is _prediction_context() else []


def refuse_dropped_columns(task: str) -> None:
    """Raise :class:`InvalidRequest` naming every field MLflow dropped, if it dropped any.

    The signature of a model packaged before flavorkit accepted OpenAI's compatibility fields does
    not list them, so MLflow drops them: an ignored one (``store``, ``user``, ...) loses nothing,
    while one accepted only at its neutral value (``tools: []``) is refused, since its value is gone.
    """
    model = ChatRequest if task == CHAT else TextRequest
    names = [n for n in dropped_columns() if not (n in IGNORED_FIELDS and n in model.model_fields)]
    params = [n for n in names if n.startswith("params.")]
    if params:  # MLflow dropped these params: unknown, or a model whose signature declares none
        listed = ", ".join(repr(n.removeprefix("params.")) for n in params)
        raise InvalidRequest(
            params[0],
            f"unknown param{'s' if len(params) > 1 else ''} {listed}: params are generation settings",
            allowed=", ".join(CALL_PARAMS if task == CHAT else [p for p in CALL_PARAMS if p != "n"])
            + " (a model packaged before flavorkit took params declares none: package it again)",
        )
    if not names:
        return
    unknown = [n for n in names if n not in model.model_fields]
    if unknown:
        raise unknown_fields_error(unknown, list(model.model_fields))
    listed = ", ".join(repr(n) for n in names)
    raise InvalidRequest(
        names[0],
        f"this model's signature, written by an older flavorkit, does not list {listed}, so MLflow dropped "
        "the value before it could be checked; package the model again to send it",
        allowed="a request without it",
    )
