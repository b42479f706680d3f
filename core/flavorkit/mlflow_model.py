"""The models-from-code file MLflow executes to rebuild a flavorkit pyfunc model.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).

The packager passes this file as ``python_model=``; MLflow copies it into the model and runs it at
load time, so no Python object is ever pickled. Everything model-specific comes from the
``model_config`` and artifacts stored beside it.

Because MLflow executes this file before any flavorkit code runs, an edit to it is detected (the
manifest lists it) only after it has run; ``flavorkit verify`` with the installed flavorkit checks a
model without running any of its code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import mlflow
from mlflow.pyfunc.model import PythonModel, PythonModelContext

_MODEL_DIR = os.path.dirname(os.path.abspath(__file__))


class FlavorkitModel(PythonModel):  # type: ignore[misc]
    """A pyfunc model delegating to :class:`flavorkit.runtime.loaded.LoadedModel`."""

    # flavorkit validates requests itself (with field names MLflow's checks cannot give), so MLflow's
    # type-hint validation of predict() is off, as for MLflow's own ChatModel; this also silences the
    # "Add type hints to predict" advice at every save and load.
    _skip_type_hint_validation = True

    def load_context(self, context: PythonModelContext) -> None:
        """Verify the whole model (signature, manifest), check its configuration and load the backend."""
        from flavorkit.model.columns import watch_dropped_columns
        from flavorkit.model.loading import load_packaged

        # MLflow runs this file from the model's root folder, so that folder is the model to verify.
        self._model = load_packaged(context.artifacts, context.model_config, _MODEL_DIR)
        watch_dropped_columns()  # so that unknown fields MLflow drops are refused, not ignored

    @property
    def loaded(self) -> Any:
        """The :class:`flavorkit.runtime.loaded.LoadedModel` behind this pyfunc model (backend, handle, defaults)."""
        return self._model

    # model_input is deliberately unannotated: MLflow would infer a second schema from a hint.
    def predict(self, context: PythonModelContext, model_input, params: dict[str, Any] | None = None) -> Any:  # type: ignore[no-untyped-def]
        """Answer each request (dict, list of dicts or DataFrame rows), in order; ``params``: this call's settings."""
        from flavorkit.errors import InvalidRequest, to_mlflow_exception
        from flavorkit.model.columns import refuse_dropped_columns

        try:
            refuse_dropped_columns(self._model.task)
            return self._model.predict(model_input, params)
        except InvalidRequest as exc:
            raise to_mlflow_exception(exc) from exc

    def predict_stream(  # type: ignore[no-untyped-def]
        self, context: PythonModelContext, model_input, params: dict[str, Any] | None = None
    ) -> Iterator[Any]:
        """Stream one request as OpenAI ``chat.completion.chunk`` dicts (or text pieces).

        Not a generator: a bad request (or more than one) raises ``INVALID_PARAMETER_VALUE`` here,
        when the call is made, rather than being deferred to the first ``next()``.
        """
        from flavorkit.errors import InvalidRequest, to_mlflow_exception
        from flavorkit.model.columns import refuse_dropped_columns

        try:
            refuse_dropped_columns(self._model.task)
            return self._model.predict_stream(model_input, params)  # type: ignore[no-any-return]
        except InvalidRequest as exc:
            raise to_mlflow_exception(exc) from exc


mlflow.models.set_model(FlavorkitModel())
