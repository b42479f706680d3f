"""The import path of :mod:`flavorkit.model.columns` before the wings, kept for models already packaged.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).

A model packaged before the move ships a ``mlflow_model.py`` that imports ``flavorkit.mlflow_columns``;
where an installed flavorkit answers that import, this module must still provide what that file calls.
"""

from __future__ import annotations

from flavorkit.model.columns import dropped_columns, refuse_dropped_columns, watch_dropped_columns

__all__ = ["dropped_columns", "refuse_dropped_columns", "watch_dropped_columns"]
