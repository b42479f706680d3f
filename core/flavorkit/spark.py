"""Batch generation on Spark: MLflow's own ``spark_udf``, with flavorkit's request check first.

``mlflow.pyfunc.spark_udf(spark, uri, env_manager="local")`` runs a packaged model as it is (see
docs/scaling-out.md). :func:`spark_udf` wraps it for two things the plain API lacks:

- **The answer text as a string column** (``output="text"``, the default), or the whole chat
  completion struct derived from the signature (``output="response"``).
- **Bad input named by column and row.** MLflow checks the signature before the model runs, so a
  ``messages`` column of the wrong shape (``array<string>``, a struct without ``role``) fails
  with MLflow's schema message, which prints the batch but names no row. Here a light pandas UDF
  validates every row with flavorkit's own rules first, naming the field (which starts with the
  column), the Spark partition and the row's position in it, and hands MLflow the request in one
  canonical struct type. The position counts the rows the task passed to the UDF: it is the row's
  place in its partition unless Spark moved a ``coalesce`` above the UDF (then it counts from the
  start of each parent partition); the message also shows the bad value.

With ``env_manager="virtualenv"`` or ``"uv"`` each Spark task starts an MLflow scoring server and
sends it each Arrow batch as one request, which MLflow cuts off after
``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT`` (60 s); :func:`spark_udf` passes a longer one
(:data:`SCORING_TIMEOUT`, or the caller's) to the executors, and its check keeps most bad rows
from reaching (and crashing) the scoring server.

With ``env_manager="virtualenv"``, MLflow builds the environment under a temporary folder of the
driver process and asks pyenv to *install* the model's Python version into a fresh pyenv root
there, which means downloading CPython from python.org and compiling it, even where that version
is installed: :func:`reuse_local_python` links the interpreters already installed into that root
(and :func:`spark_udf` calls it), so pyenv finds the version and builds nothing. With ``"uv"``,
:func:`spark_udf` has uv compile the packages it installs, as pip does (see :func:`executor_env`).

This module is a driver-side helper; it is not shipped inside packaged models, and its check is
sent to the workers by value. The check uses :mod:`flavorkit.schema`, so flavorkit must be
importable on the Spark workers (the plain MLflow API needs only the model's own requirements).
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from flavorkit.errors import InvalidRequest
from flavorkit.schema import parse_request
from flavorkit.settings import scoped_env
from flavorkit.signatures import CHAT, TASKS, TEXT

__all__ = [
    "CHAT_REQUEST",
    "SCORING_TIMEOUT",
    "SCORING_TIMEOUT_ENV",
    "TEXT_REQUEST",
    "UV_COMPILE_ENV",
    "check_requests",
    "executor_env",
    "reuse_local_python",
    "spark_udf",
]

#: MLflow's limit, in seconds, on one scoring-server request (one Arrow batch of a Spark task).
SCORING_TIMEOUT_ENV = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"
#: What :func:`spark_udf` passes to the executors when the caller sets nothing: one hour. Longer is not
#: safer: over MLflow's stdin transport a scoring server that died is only noticed at the timeout.
SCORING_TIMEOUT = 3600
#: uv's switch for compiling the installed packages to bytecode, which pip does by default and uv does not.
UV_COMPILE_ENV = "UV_COMPILE_BYTECODE"

_SETTINGS = (
    ("temperature", "double"),
    ("max_tokens", "bigint"),
    ("stop", "array<string>"),
    ("top_p", "double"),
    ("top_k", "bigint"),
    ("seed", "bigint"),
)
_FIELDS = {
    CHAT: (("messages", "array<struct<role:string,content:string,name:string>>"), ("n", "bigint"), *_SETTINGS),
    TEXT: (("prompt", "string"), *_SETTINGS),
}
#: The canonical Spark type of a chat request, as MLflow receives it from :func:`spark_udf`.
CHAT_REQUEST = ", ".join(f"{name} {kind}" for name, kind in _FIELDS[CHAT])
#: The canonical Spark type of a text-generation request.
TEXT_REQUEST = ", ".join(f"{name} {kind}" for name, kind in _FIELDS[TEXT])
_log = logging.getLogger(__name__)
_NUMBERS = ("temperature", "max_tokens", "top_p", "top_k", "seed", "n")


def _canonical(row: dict[str, Any], task: str) -> dict[str, Any]:
    """One validated request as a row of :data:`CHAT_REQUEST` or :data:`TEXT_REQUEST` (unset fields None)."""
    req = parse_request(row, task)
    data = req.model_dump(exclude_none=True, exclude={"stream"})
    out: dict[str, Any] = {name: data.get(name) for name in _NUMBERS if task == CHAT or name != "n"}
    out["stop"] = list(req.stop_strings()) or None
    if task == CHAT:
        out["messages"] = [
            {"role": m["role"], "content": m["content"], "name": m.get("name")} for m in data["messages"]
        ]
    else:
        out["prompt"] = data["prompt"]
    return out


def check_requests(
    rows: pd.DataFrame, task: str, *, partition: int | None = None, offset: int = 0
) -> list[dict[str, Any]]:
    """Validate every row of a batch; return them canonical, or raise one ``InvalidRequest`` naming each bad row.

    A field is named from its column (``messages[0].role``); the row by its position in the Spark
    partition (``offset`` is the number of the partition's rows in earlier batches).
    """
    if task not in TASKS:
        raise InvalidRequest("task", f"unknown task {task!r}", allowed=", ".join(TASKS))
    where = "row" if partition is None else f"Spark partition {partition}, row"
    good: list[dict[str, Any]] = []
    errors: list[InvalidRequest] = []
    for i, row in enumerate(rows.to_dict(orient="records")):
        try:
            good.append(_canonical(row, task))
        except InvalidRequest as exc:
            errors.append(InvalidRequest(exc.field, f"{exc.detail} [{where} {offset + i}]", exc.allowed))
    if errors:
        raise InvalidRequest.for_rows(errors)
    return good


def _checker(task: str) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The body of the validating pandas UDF: rows in, canonical requests out, counting rows per partition."""

    def check(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from pyspark import TaskContext

        context = TaskContext.get()
        partition = None if context is None else context.partitionId()
        columns = [name for name, _kind in _FIELDS[task]]
        offset = 0
        for batch in batches:
            rows = check_requests(batch, task, partition=partition, offset=offset)
            offset += len(batch)
            yield pd.DataFrame(rows, columns=columns)

    return check


def executor_env(env_manager: str, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for the executors: ``extra_env``, plus a long scoring timeout unless ``local``.

    The timeout is the caller's (``extra_env`` or this process's ``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT``),
    else :data:`SCORING_TIMEOUT`; ``env_manager="local"`` starts no scoring server and gets none.
    With ``uv``, ``UV_COMPILE_BYTECODE`` is 1 unless the caller set it: uv installs without compiling,
    so each scoring server (one per task) would otherwise compile MLflow and the model's packages
    again wherever ``.pyc`` files are not written (``PYTHONDONTWRITEBYTECODE``, common in containers).
    """
    env = dict(extra_env or {})
    if env_manager != "local":
        env.setdefault(SCORING_TIMEOUT_ENV, os.environ.get(SCORING_TIMEOUT_ENV, str(SCORING_TIMEOUT)))
    if env_manager == "uv":
        env.setdefault(UV_COMPILE_ENV, os.environ.get(UV_COMPILE_ENV, "1"))
    return env


def _installed_pythons() -> dict[str, Path]:
    """Installed interpreters by version: pyenv's installs, then this interpreter's base installation."""
    found: dict[str, Path] = {}
    root = os.environ.get("PYENV_ROOT")
    pyenv = shutil.which("pyenv")
    if not root and pyenv:
        done = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False)
        root = done.stdout.strip() if done.returncode == 0 else None
    versions = Path(root, "versions") if root else None
    if versions is not None and versions.is_dir():
        for prefix in sorted(versions.iterdir()):
            # pyenv-virtualenv's environments live here too; a venv cannot be a base interpreter.
            if (prefix / "bin" / "python").is_file() and not (prefix / "pyvenv.cfg").exists():
                found.setdefault(prefix.name, prefix)
    base = Path(sys.base_prefix)
    if (base / "bin" / "python").is_file():
        found.setdefault(platform.python_version(), base)
    return found


def reuse_local_python() -> list[str]:
    """Let ``spark_udf(..., env_manager="virtualenv")`` build from installed interpreters; return the versions linked.

    MLflow's Spark UDF gives pyenv an empty root in a temporary folder of this process
    (``<tmp>/envs/pyenv_root``) and runs ``pyenv install --skip-existing <model's version>`` there:
    pyenv then downloads and compiles CPython (it needs www.python.org and a C toolchain, and takes
    minutes), once per driver process. This links each interpreter installed here (pyenv's
    versions, and this interpreter's base) into that root, so the install is skipped. Call it on
    the driver before ``mlflow.pyfunc.spark_udf``; :func:`spark_udf` does. Where MLflow uses another
    root (Databricks' NFS folder) it links nothing. The links go with MLflow's folder at exit.
    """
    try:
        from mlflow.utils.file_utils import get_or_create_tmp_dir
        from mlflow.utils.nfs_on_spark import get_nfs_cache_root_dir
    except ImportError:  # pragma: no cover - a future MLflow that moved these
        _log.warning("this MLflow has no per-process environment folder; pyenv may compile the model's Python")
        return []
    if get_nfs_cache_root_dir() is not None:
        return []
    # The layout of mlflow.pyfunc.backend.PyFuncBackend.prepare_env and mlflow.utils.virtualenv.
    versions = Path(get_or_create_tmp_dir(), "envs", "pyenv_root", "versions")
    versions.mkdir(parents=True, exist_ok=True)
    linked = []
    for version, prefix in _installed_pythons().items():
        link = versions / version
        if not link.exists() and not link.is_symlink():
            link.symlink_to(prefix, target_is_directory=True)
        linked.append(version)
    return linked


def _task_of(metadata: Any) -> str:
    """The task recorded in a packaged model's MLmodel (``metadata.flavorkit.task``)."""
    info = (getattr(metadata, "metadata", None) or {}).get("flavorkit") or {}
    task = info.get("task")
    if task not in TASKS:
        raise InvalidRequest("model_uri", "is not a flavorkit model (MLmodel has no metadata.flavorkit.task)")
    return str(task)


def spark_udf(
    spark: Any,
    model_uri: str,
    *,
    output: Literal["text", "response"] = "text",
    env_manager: str = "local",
    extra_env: dict[str, str] | None = None,
    **kwargs: Any,
) -> Callable[..., Any]:
    """A function of request columns that returns a Spark column of answers (see the module docstring).

    ``f = spark_udf(spark, "models:/chat@champion")`` then ``df.select(f("messages", "max_tokens"))``:
    the columns (names or ``Column`` objects) are the request's fields, named as the request names
    them. ``output="text"`` gives the answer text (the first choice's content for a chat model);
    ``"response"`` the chat completion struct. Other keyword arguments go to
    :func:`mlflow.pyfunc.spark_udf`.
    """
    import mlflow
    from pyspark import cloudpickle
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.functions import pandas_udf

    if output not in ("text", "response"):
        raise InvalidRequest("output", f"unknown output {output!r}", allowed="'text', 'response'")
    env = executor_env(env_manager, extra_env)
    if env_manager == "virtualenv":
        reuse_local_python()
    # env's build settings in this process while MLflow builds the model's environment here; without
    # one, the variable keeps its value (None: unset) and is still put back after MLflow's build.
    with scoped_env({UV_COMPILE_ENV: env.get(UV_COMPILE_ENV, os.environ.get(UV_COMPILE_ENV))}):
        model = mlflow.pyfunc.spark_udf(spark, model_uri, env_manager=env_manager, extra_env=env or None, **kwargs)
    task = _task_of(model.metadata)
    # Ship this module's code with the UDF, not a reference to it: a Python worker that loaded a
    # model imports flavorkit from the model's code/ folder, which does not hold this module.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    check = pandas_udf(_checker(task), CHAT_REQUEST if task == CHAT else TEXT_REQUEST)  # type: ignore[call-overload]

    def apply(*columns: Any) -> Any:
        """The answer column for the request given by ``columns``."""
        answer = model(check(F.struct(*columns)))
        if task == CHAT and output == "text":
            return answer["choices"][0]["message"]["content"]
        return answer

    return apply
