"""Batch generation on pyspark ``local[2]`` through MLflow's own ``spark_udf`` (issue: scale-out, item 1).

Real Spark (one session for the module), real packaged models (the tiny onnx-cpu fixtures), the
plain MLflow API with ``env_manager="local"``, and the :mod:`flavorkit.spark` helper. What a Spark
worker does is observed through a real middleware plugin (entry point ``flavorkit.middleware``,
installed on the workers' ``PYTHONPATH``) that appends one JSON line per backend ``load`` and
``generate`` call to the file named by ``FK_SPARK_PROBE`` (passed with ``extra_env``).
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest

pyspark = pytest.importorskip("pyspark")

from pyspark.errors import PythonException  # noqa: E402
from pyspark.sql import DataFrame, SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

import flavorkit  # noqa: E402
from flavorkit.spark import spark_udf  # noqa: E402
from helpers import PROMPTS, require_java  # noqa: E402
from plugin_fixtures import make_distribution  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    # PySpark 4.3 warns on every pandas UDF that it "does not yet fully support pandas >= 3.0.0".
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]

MESSAGES = "array<struct<role:string,content:string>>"
CHAT_ROWS = f"messages {MESSAGES}, max_tokens int, temperature double, stop array<string>"

#: A middleware that records, per Python worker process, each backend load and generate call.
PROBE = """
import json, os
from flavorkit import hookimpl

def _record(kind, size=None):
    path = os.environ.get("FK_SPARK_PROBE")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "kind": kind, "size": size}) + "\\n")

class Probe:
    @hookimpl(wrapper=True)
    def load(self, artifacts, options):
        _record("load")
        return (yield)

    @hookimpl(wrapper=True)
    def generate(self, handle, requests):
        _record("generate", len(requests))
        return (yield)

middleware = Probe()
"""


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    """One ``local[2]`` session; its Python workers run this interpreter and see the probe plugin."""
    require_java("pyspark")
    site = make_distribution(
        tmp_path_factory.mktemp("spark-site") / "probe",
        "fk-spark-probe",
        modules={"fk_spark_probe": PROBE},
        middleware={"probe": "fk_spark_probe:middleware"},
    )
    paths = [str(site), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    old = {k: os.environ.get(k) for k in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    session = (
        SparkSession.builder.master("local[2]")
        .appName("flavorkit-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.executorEnv.PYTHONPATH", os.pathsep.join(paths))
        .config("spark.executorEnv.MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def text_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_ort: Path) -> Path:
    """The tiny ORT model packaged for the ``text-generation`` task (greedy)."""
    path = tmp_path_factory.mktemp("packaged") / "tiny-text"
    flavorkit.package(
        model=str(tiny_ort), backend="onnx-cpu", path=path, task="text-generation", generation={"temperature": 0.0}
    )
    return path


def chat_requests(count: int) -> list[dict[str, Any]]:
    """Greedy chat requests with different prompts, lengths and settings (some with a stop list)."""
    out = []
    for i in range(count):
        messages = [{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} #{i}"}]
        if i % 3 == 1:
            messages = [{"role": "system", "content": "Be brief."}, *messages]
        out.append(
            {"messages": messages, "max_tokens": 4 + i % 5, "temperature": 0.0, "stop": ["e"] if i % 4 == 2 else None}
        )
    return out


def chat_frame(spark: SparkSession, requests: list[dict[str, Any]], partitions: int = 2) -> DataFrame:
    """The requests as a DataFrame: ``messages`` is ``array<struct<role,content>>``, settings are columns."""
    rows = [(r["messages"], r["max_tokens"], r["temperature"], r["stop"]) for r in requests]
    return spark.createDataFrame(spark.sparkContext.parallelize(rows, partitions), CHAT_ROWS)


def frame(spark: SparkSession, rows: list[Any], schema: str) -> DataFrame:
    """``rows`` as a DataFrame of one partition (``coalesce(1)`` could be moved above the UDF by Spark)."""
    return spark.createDataFrame(spark.sparkContext.parallelize(rows, 1), schema)


def in_process(model_dir: Path, requests: list[dict[str, Any]]) -> list[Any]:
    """The same requests answered by ``predict`` in this process, as one batch."""
    model = mlflow.pyfunc.load_model(str(model_dir))
    frame = pd.DataFrame([{k: v for k, v in r.items() if v is not None} for r in requests])
    return list(model.predict(frame))


def probe_records(path: Path) -> list[dict[str, Any]]:
    """The probe's JSON lines."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- the plain MLflow API ---------------------------------------------------------------------------


def test_chat_struct_result_answers_every_row_as_in_process_predict(spark: SparkSession, tiny_model_dir: Path) -> None:
    requests = chat_requests(10)
    udf = mlflow.pyfunc.spark_udf(spark, str(tiny_model_dir), env_manager="local")
    # The result type MLflow derives from the signature is the chat completion struct.
    assert udf.metadata.get_output_schema().input_names() == ["id", "object", "created", "model", "choices", "usage"]
    df = chat_frame(spark, requests).withColumn("k", F.monotonically_increasing_id())
    out = (
        df.withColumn("answer", udf(F.struct("messages", "max_tokens", "temperature", "stop")))
        .orderBy("k")
        .select("answer")
        .collect()
    )
    assert len(out) == len(requests)
    expected = in_process(tiny_model_dir, requests)
    for got, want in zip(out, expected, strict=True):
        answer = got.answer.asDict(recursive=True)
        assert answer["object"] == "chat.completion" and answer["id"].startswith("chatcmpl-")
        assert answer["choices"] == [
            {
                "index": 0,
                "message": {"role": "assistant", "content": want["choices"][0]["message"]["content"]},
                "finish_reason": want["choices"][0]["finish_reason"],
            }
        ]
        assert answer["usage"] == want["usage"]


def test_answer_text_as_a_string_column_by_field_extraction(spark: SparkSession, tiny_model_dir: Path) -> None:
    requests = chat_requests(4)
    udf = mlflow.pyfunc.spark_udf(spark, str(tiny_model_dir), env_manager="local")
    df = chat_frame(spark, requests, partitions=1)
    answer = udf(F.struct("messages", "max_tokens", "temperature"))["choices"][0]["message"]["content"]
    out = df.select(answer.alias("text"))
    assert out.schema["text"].dataType.simpleString() == "string"
    # No stop column here, so the in-process requests have none either.
    unstopped = [{**r, "stop": None} for r in requests]
    expected = [r["choices"][0]["message"]["content"] for r in in_process(tiny_model_dir, unstopped)]
    assert [row.text for row in out.collect()] == expected


def test_result_type_string_is_the_response_id_not_the_answer(spark: SparkSession, tiny_model_dir: Path) -> None:
    # MLflow's "string" result type takes the leftmost output column: pinned so the docs can warn.
    udf = mlflow.pyfunc.spark_udf(spark, str(tiny_model_dir), env_manager="local", result_type="string")
    out = chat_frame(spark, chat_requests(2), partitions=1).select(udf(F.struct("messages", "max_tokens")).alias("s"))
    assert all(row.s.startswith("chatcmpl-") for row in out.collect())


def test_text_generation_model_gives_a_string(spark: SparkSession, text_model_dir: Path) -> None:
    prompts = [f"{p} #{i}" for i, p in enumerate(PROMPTS)]
    udf = mlflow.pyfunc.spark_udf(spark, str(text_model_dir), env_manager="local")
    df = frame(spark, [(p, 6) for p in prompts], "prompt string, max_tokens int")
    out = df.select(udf(F.struct("prompt", "max_tokens")).alias("text"))
    assert out.schema["text"].dataType.simpleString() == "string"
    expected = in_process(text_model_dir, [{"prompt": p, "max_tokens": 6} for p in prompts])
    assert [row.text for row in out.collect()] == expected
    assert all(isinstance(t, str) for t in expected) and any(expected)


def test_each_task_loads_once_and_predicts_its_rows_in_backend_batches(
    spark: SparkSession, tiny_model_dir: Path, tmp_path: Path
) -> None:
    probe = tmp_path / "probe.jsonl"
    requests = chat_requests(12)
    df = chat_frame(spark, requests, partitions=2)
    sizes = df.rdd.glom().map(len).collect()
    assert sizes == [6, 6]
    udf = mlflow.pyfunc.spark_udf(
        spark, str(tiny_model_dir), env_manager="local", extra_env={"FK_SPARK_PROBE": str(probe)}
    )
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "4")
    try:
        out = df.select(udf(F.struct("messages", "max_tokens", "temperature", "stop")).alias("a")).collect()
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    assert len(out) == 12
    records = probe_records(probe)
    loads = [r for r in records if r["kind"] == "load"]
    generates = [r["size"] for r in records if r["kind"] == "generate"]
    # One load per task (here: per partition), never per Arrow batch or per row.
    assert len(loads) == len(sizes)
    assert all(r["pid"] != os.getpid() for r in records), "the model runs in Spark's Python workers"
    # Each Arrow batch of a partition (4 rows, then the 2 left) is one backend generate call.
    assert sorted(generates) == [2, 2, 4, 4]
    per_pid = Counter()
    for r in records:
        if r["kind"] == "generate":
            per_pid[r["pid"]] += r["size"]
    assert sum(per_pid.values()) == 12


# -- bad input ----------------------------------------------------------------------------------


def _job_error(df: DataFrame, column: Any) -> str:
    with pytest.raises(PythonException) as exc:
        df.select(column.alias("a")).collect()
    text = str(exc.value)
    for opaque in ("ArrowInvalid", "ArrowTypeError", "PicklingError", "UnpicklingError"):
        assert opaque not in text
    return text


def test_plain_api_wrong_messages_shape_fails_with_mlflow_schema_error(
    spark: SparkSession, tiny_model_dir: Path
) -> None:
    udf = mlflow.pyfunc.spark_udf(spark, str(tiny_model_dir), env_manager="local")
    bad = frame(spark, [(["hello"],)], "messages array<string>")
    text = _job_error(bad, udf(F.struct("messages")))
    # MLflow checks the signature before flavorkit runs: its message names the problem, not the row.
    assert "Failed to enforce schema" in text and "Expected data to be dictionary, got str" in text
    no_role = frame(spark, [([{"content": "hi"}],)], "messages array<struct<content:string>>")
    text = _job_error(no_role, udf(F.struct("messages")))
    assert "Missing required properties: {'role'}" in text


def test_plain_api_bad_message_values_are_flavorkits_error_naming_the_row(
    spark: SparkSession, tiny_model_dir: Path
) -> None:
    udf = mlflow.pyfunc.spark_udf(spark, str(tiny_model_dir), env_manager="local")
    rows = [
        ([{"role": "user", "content": "hi"}],),
        ([{"role": "robot", "content": "x"}],),
        ([{"role": None, "content": "y"}],),
    ]
    bad = frame(spark, rows, f"messages {MESSAGES}")
    text = _job_error(bad, udf(F.struct("messages")))
    assert "invalid request: 2 bad rows" in text
    assert (
        "field 'inputs[1].messages[0].role': Input should be 'system', 'user', 'assistant', 'developer' or 'tool'; "
        "got 'robot'"
    ) in text
    assert "field 'inputs[2].messages[0].role': is required" in text


@pytest.mark.parametrize(
    ("schema", "rows", "expected"),
    [
        (
            "messages array<string>",
            [([],), (["hello"],)],
            "field 'messages[0]': Input should be a valid dictionary or instance of ChatMessage; got 'hello' "
            "[Spark partition 0, row 1]",
        ),
        (
            "messages array<struct<content:string>>",
            [([{"content": "a"}],), ([{"content": "b"}],)],
            "field 'messages[0].role': is required [Spark partition 0, row 0]",
        ),
        (
            "messages string",
            [("hi",)],
            "field 'messages': Input should be a valid list; got 'hi' [Spark partition 0, row 0]",
        ),
        (
            f"messages {MESSAGES}",
            [([{"role": "user", "content": "ok"}],)] * 3 + [([{"role": "robot", "content": "x"}],)],
            "field 'messages[0].role': Input should be 'system', 'user', 'assistant', 'developer' or 'tool'; "
            "got 'robot' "
            "[Spark partition 0, row 3]",
        ),
    ],
    ids=["array-of-strings", "missing-role", "string", "bad-role"],
)
def test_helper_names_the_column_and_the_row_for_any_wrong_shape(
    spark: SparkSession, tiny_model_dir: Path, schema: str, rows: list[Any], expected: str
) -> None:
    bad = frame(spark, rows, schema)
    text = _job_error(bad, spark_udf(spark, str(tiny_model_dir))("messages"))
    assert "flavorkit.errors.InvalidRequest: invalid request" in text
    assert expected in text
    assert "Failed to enforce schema" not in text, "flavorkit's check runs before MLflow's"


def test_helper_counts_rows_across_arrow_batches(spark: SparkSession, tiny_model_dir: Path) -> None:
    rows = [([{"role": "user", "content": "ok"}],)] * 5 + [([{"role": "robot", "content": "x"}],)]
    bad = frame(spark, rows, f"messages {MESSAGES}")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "2")
    try:
        text = _job_error(bad, spark_udf(spark, str(tiny_model_dir))("messages"))
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    assert "got 'robot' [Spark partition 0, row 5]" in text


# -- the helper's outputs -------------------------------------------------------------------------


def test_helper_text_and_response_outputs_equal_in_process_predict(spark: SparkSession, tiny_model_dir: Path) -> None:
    requests = chat_requests(6)
    df = chat_frame(spark, requests).withColumn("k", F.monotonically_increasing_id())
    text = spark_udf(spark, str(tiny_model_dir))
    response = spark_udf(spark, str(tiny_model_dir), output="response")
    cols = ("messages", "max_tokens", "temperature", "stop")
    out = df.select("k", text(*cols).alias("text"), response(*cols).alias("response")).orderBy("k").collect()
    expected = in_process(tiny_model_dir, requests)
    assert [row.text for row in out] == [r["choices"][0]["message"]["content"] for r in expected]
    assert [row.response.usage.asDict() for row in out] == [r["usage"] for r in expected]


def test_helper_on_a_text_generation_model(spark: SparkSession, text_model_dir: Path) -> None:
    df = frame(spark, [("Hi", 5), ("7", 3)], "prompt string, max_tokens bigint")
    out = df.select(spark_udf(spark, str(text_model_dir))("prompt", "max_tokens").alias("t")).collect()
    assert [row.t for row in out] == in_process(
        text_model_dir, [{"prompt": "Hi", "max_tokens": 5}, {"prompt": "7", "max_tokens": 3}]
    )


def test_helper_gives_non_local_env_managers_a_long_scoring_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    from flavorkit.spark import SCORING_TIMEOUT, SCORING_TIMEOUT_ENV, executor_env

    monkeypatch.delenv(SCORING_TIMEOUT_ENV, raising=False)
    assert SCORING_TIMEOUT_ENV == "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT" and SCORING_TIMEOUT == 3600
    assert executor_env("local") == {}
    assert executor_env("local", {"A": "1"}) == {"A": "1"}
    assert executor_env("virtualenv") == {SCORING_TIMEOUT_ENV: str(SCORING_TIMEOUT)}
    assert executor_env("uv", {SCORING_TIMEOUT_ENV: "120"})[SCORING_TIMEOUT_ENV] == "120"
    monkeypatch.setenv(SCORING_TIMEOUT_ENV, "900")
    assert executor_env("virtualenv", {"A": "1"}) == {"A": "1", SCORING_TIMEOUT_ENV: "900"}


def test_the_spark_helper_is_not_shipped_in_packaged_models(tiny_model_dir: Path) -> None:
    shipped = {p.relative_to(tiny_model_dir / "code").as_posix() for p in (tiny_model_dir / "code").rglob("*.py")}
    assert "flavorkit/schema.py" in shipped and "flavorkit/spark.py" not in shipped


def test_helper_works_in_python_workers_that_already_loaded_a_model(spark: SparkSession, tiny_model_dir: Path) -> None:
    # Loading a model puts its code/ first on sys.path and re-imports flavorkit from there, where
    # flavorkit.spark is not shipped; Spark reuses its Python workers for the next job.
    requests = chat_requests(4)
    df = chat_frame(spark, requests, partitions=2)
    plain = mlflow.pyfunc.spark_udf(spark, str(tiny_model_dir), env_manager="local")
    assert len(df.select(plain(F.struct("messages", "max_tokens")).alias("a")).collect()) == 4
    text = spark_udf(spark, str(tiny_model_dir))
    out = df.select(text("messages", "max_tokens", "temperature", "stop").alias("t")).collect()
    assert [row.t for row in out] == [
        r["choices"][0]["message"]["content"] for r in in_process(tiny_model_dir, requests)
    ]


def test_check_requests_gives_canonical_rows_and_lists_every_bad_row() -> None:
    from flavorkit.errors import InvalidRequest
    from flavorkit.spark import check_requests

    good = pd.DataFrame(
        [
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3.0, "stop": "x"},
            {"messages": [{"role": "user", "content": "yo", "name": "a"}], "max_tokens": float("nan"), "stop": None},
        ]
    )
    assert check_requests(good, "llm/v1/chat") == [
        {
            "temperature": None,
            "max_tokens": 3,
            "top_p": None,
            "top_k": None,
            "seed": None,
            "n": None,
            "stop": ["x"],
            "messages": [{"role": "user", "content": "hi", "name": None}],
        },
        {
            "temperature": None,
            "max_tokens": None,
            "top_p": None,
            "top_k": None,
            "seed": None,
            "n": None,
            "stop": None,
            "messages": [{"role": "user", "content": "yo", "name": "a"}],
        },
    ]
    bad = pd.DataFrame([{"prompt": "ok"}, {"prompt": 3}, {"prompt": "x", "temperature": 9}])
    with pytest.raises(InvalidRequest) as exc:
        check_requests(bad, "text-generation", partition=4, offset=10)
    assert [(e.field, e.detail.rsplit("[", 1)[1]) for e in exc.value.errors] == [
        ("prompt", "Spark partition 4, row 11]"),
        ("temperature", "Spark partition 4, row 12]"),
    ]
    assert str(exc.value).startswith("invalid request: 2 bad rows: field 'prompt'")


# -- env managers other than local: a scoring server per task, with MLflow's request timeout -------
#
# spark_udf builds the model's environment from python_env.yaml and requirements.txt in a temporary
# folder of the driver process, not under ~/.mlflow/envs, and names it by the model's python_env and
# requirements only: a uv-built environment would be reused by env_manager="virtualenv" (and the
# reverse), so each manager gets its own folder here (built once, shared by that manager's tests).
# MLflow calls ``uv`` and pyenv by name: they are found on PATH or beside this interpreter (the dev
# extra installs ``uv`` there).

_ENV_ROOTS: dict[str, Any] = {}
_COLS = ("messages", "max_tokens", "temperature", "stop")


def _tool(name: str, monkeypatch: pytest.MonkeyPatch, why: str) -> str:
    """``name`` on PATH, else beside this interpreter (then put on PATH for MLflow); skip, or fail under CI."""
    import shutil

    found = shutil.which(name)
    beside = Path(sys.executable).parent / name
    if found is None and beside.is_file():
        monkeypatch.setenv("PATH", f"{beside.parent}{os.pathsep}{os.environ.get('PATH', '')}")
        found = str(beside)
    if found is None:
        if os.environ.get("CI"):
            raise RuntimeError(f"CI must have {name} ({why})")
        pytest.skip(f"{name} is not on PATH: {why}")
    return found


def _tmp_dir_slot() -> tuple[dict[Any, Any], Any]:
    """MLflow's per-process value cache and the key of its per-process folder (where spark_udf builds)."""
    from mlflow.utils import process
    from mlflow.utils.file_utils import get_or_create_tmp_dir

    return process._per_process_value_cache_map, (get_or_create_tmp_dir.__wrapped__, ())  # type: ignore[attr-defined]


def _own_env_root(manager: str) -> Path:
    """Point MLflow's per-process folder (where spark_udf builds environments) at ``manager``'s own one."""
    from mlflow.utils.file_utils import get_or_create_tmp_dir

    cache, key = _tmp_dir_slot()
    if manager in _ENV_ROOTS:
        cache[key] = _ENV_ROOTS[manager]
    else:
        cache.pop(key, None)
        get_or_create_tmp_dir()  # a new folder, removed by MLflow at exit
        _ENV_ROOTS[manager] = cache[key]
    return Path(cache[key][0], "envs")


@pytest.fixture
def _env_root_restored() -> Iterator[None]:
    """Give MLflow's per-process folder back to the rest of the session after a test chose its own."""
    cache, key = _tmp_dir_slot()
    before = cache.get(key)
    yield
    if before is None:
        cache.pop(key, None)
    else:
        cache[key] = before


def _built_envs(root: Path) -> list[dict[str, str]]:
    """The ``pyvenv.cfg`` of each environment MLflow built under ``root``."""
    return [
        dict(line.split(" = ", 1) for line in cfg.read_text().splitlines() if " = " in line)
        for cfg in sorted(root.glob("virtualenv_envs/*/pyvenv.cfg"))
    ]


@pytest.fixture(params=["uv", "virtualenv"])
def env_manager(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, _env_root_restored: None) -> str:
    """A non-local env manager whose tool is installed (``uv``; pyenv for ``virtualenv``), with its own folder."""
    if request.param == "uv":
        _tool("uv", monkeypatch, "pip install uv; env_manager='uv' runs it to build the model's environment")
    else:
        _tool("pyenv", monkeypatch, "env_manager='virtualenv' asks pyenv for the model's Python version")
    _own_env_root(request.param)
    return str(request.param)


def _long_requests() -> list[dict[str, Any]]:
    return [{**r, "max_tokens": 150} for r in chat_requests(16)]


def _texts(model_dir: Path, requests: list[dict[str, Any]]) -> list[str]:
    return [r["choices"][0]["message"]["content"] for r in in_process(model_dir, requests)]


def test_non_local_env_manager_batches_fail_past_the_scoring_timeout_and_the_helper_lifts_it(
    spark: SparkSession, tiny_model_dir: Path, env_manager: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flavorkit.spark import SCORING_TIMEOUT_ENV

    monkeypatch.delenv(SCORING_TIMEOUT_ENV, raising=False)
    requests = _long_requests()
    df = chat_frame(spark, requests, partitions=1)
    helper = spark_udf(spark, str(tiny_model_dir), env_manager=env_manager)  # builds the environment here
    # The model's environment was built by the manager asked for, on this Python version.
    (built,) = _built_envs(_own_env_root(env_manager))
    assert platform.python_version() in (built.get("version_info"), built.get("version"))  # uv, venv
    assert ("uv" in built) == (env_manager == "uv")
    # Compiled at install (pip does by default; the helper asks uv to), so no scoring server recompiles:
    # checked before any scoring server has run (one would write .pyc files as it imports).
    assert list(_own_env_root(env_manager).glob("virtualenv_envs/*/lib/python*/site-packages/mlflow/__pycache__/*.pyc"))
    # The helper passes a long timeout to the executors: every row is answered, as in-process.
    out = df.select(helper(*_COLS).alias("t")).collect()
    assert [row.t for row in out] == _texts(tiny_model_dir, requests)
    # Each task's scoring server answers one Arrow batch per request; past the timeout the task fails.
    # (1 s stands in for MLflow's default 60 s: a batch of long generations takes longer than that.)
    short = mlflow.pyfunc.spark_udf(
        spark, str(tiny_model_dir), env_manager=env_manager, extra_env={SCORING_TIMEOUT_ENV: "1"}
    )
    with pytest.raises(PythonException, match=r"Scoring timeout|exceeded limit"):
        df.select(short(F.struct(*_COLS)).alias("a")).collect()


def test_plain_api_with_virtualenv_and_a_long_timeout_in_extra_env_answers_every_row(
    spark: SparkSession, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, _env_root_restored: None
) -> None:
    from flavorkit.spark import SCORING_TIMEOUT_ENV, reuse_local_python

    _tool("pyenv", monkeypatch, "env_manager='virtualenv' asks pyenv for the model's Python version")
    root = _own_env_root("virtualenv-plain")  # its own, empty: the plain API must build, not reuse
    # Without this, MLflow's pyenv compiles the model's Python from python.org's source (fails offline).
    assert platform.python_version() in reuse_local_python()
    requests = _long_requests()[:6]
    df = chat_frame(spark, requests, partitions=2)
    udf = mlflow.pyfunc.spark_udf(
        spark, str(tiny_model_dir), env_manager="virtualenv", extra_env={SCORING_TIMEOUT_ENV: "3600"}
    )
    out = df.select(udf(F.struct(*_COLS))["choices"][0]["message"]["content"].alias("t")).collect()
    assert [row.t for row in out] == _texts(tiny_model_dir, requests)
    # `python -m venv` ran the linked interpreter: pyenv's root holds links only, nothing compiled.
    (built,) = _built_envs(root)
    assert built["home"] == str(root / "pyenv_root" / "versions" / platform.python_version() / "bin")
    assert all(p.is_symlink() for p in (root / "pyenv_root" / "versions").iterdir())


def test_helper_asks_uv_to_compile_bytecode_unless_the_caller_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    from flavorkit.spark import SCORING_TIMEOUT, SCORING_TIMEOUT_ENV, executor_env

    monkeypatch.delenv(SCORING_TIMEOUT_ENV, raising=False)
    monkeypatch.delenv("UV_COMPILE_BYTECODE", raising=False)
    long = {SCORING_TIMEOUT_ENV: str(SCORING_TIMEOUT)}
    assert executor_env("uv") == {**long, "UV_COMPILE_BYTECODE": "1"}
    assert executor_env("uv", {"UV_COMPILE_BYTECODE": "0"}) == {**long, "UV_COMPILE_BYTECODE": "0"}
    assert executor_env("virtualenv") == long and executor_env("local") == {}
    monkeypatch.setenv("UV_COMPILE_BYTECODE", "false")
    assert executor_env("uv") == {**long, "UV_COMPILE_BYTECODE": "false"}


@pytest.mark.parametrize(
    ("before", "env_manager", "extra_env", "during"),
    [
        (None, "uv", None, "1"),  # unset before: uv compiles, and the variable is removed afterwards
        ("x", "uv", {"UV_COMPILE_BYTECODE": "0"}, "0"),  # the caller's value, then the old one back
        ("x", "local", None, "x"),  # no build setting: the variable keeps its value
        (None, "local", None, None),  # ...and stays unset
    ],
)
def test_helper_sets_the_build_setting_only_while_mlflow_builds(
    monkeypatch: pytest.MonkeyPatch,
    before: str | None,
    env_manager: str,
    extra_env: dict[str, str] | None,
    during: str | None,
) -> None:
    seen: list[str | None] = []

    def build(*args: Any, **kwargs: Any) -> Any:
        seen.append(os.environ.get("UV_COMPILE_BYTECODE"))
        raise RuntimeError("the build stops here")  # the variable is put back on the way out too

    if before is None:
        monkeypatch.delenv("UV_COMPILE_BYTECODE", raising=False)
    else:
        monkeypatch.setenv("UV_COMPILE_BYTECODE", before)
    # The module itself: until something loads it, mlflow.pyfunc is a lazy stand-in.
    monkeypatch.setattr(importlib.import_module("mlflow.pyfunc"), "spark_udf", build)
    with pytest.raises(RuntimeError, match="the build stops here"):
        spark_udf(None, "models:/m/1", env_manager=env_manager, extra_env=extra_env)
    assert seen == [during]
    assert os.environ.get("UV_COMPILE_BYTECODE") == before


def test_reuse_local_python_links_installed_interpreters_and_removing_the_links_keeps_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from mlflow.utils import file_utils

    from flavorkit.spark import reuse_local_python

    root = tmp_path / "pyenv"
    for name in ("3.10.13", "3.12.1"):
        (root / "versions" / name / "bin").mkdir(parents=True)
        (root / "versions" / name / "bin" / "python").write_text("")
    venv = root / "versions" / "a-pyenv-virtualenv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (venv / "pyvenv.cfg").write_text("home = /x\n")
    monkeypatch.setenv("PYENV_ROOT", str(root))
    mlflow_tmp = tmp_path / "mlflow-tmp"
    mlflow_tmp.mkdir()
    monkeypatch.setattr(file_utils, "get_or_create_tmp_dir", lambda: str(mlflow_tmp))
    linked = reuse_local_python()
    assert reuse_local_python() == linked  # idempotent
    versions = mlflow_tmp / "envs" / "pyenv_root" / "versions"
    assert {"3.10.13", "3.12.1"} <= set(linked) and "a-pyenv-virtualenv" not in linked
    assert (versions / "3.12.1").resolve() == (root / "versions" / "3.12.1").resolve()
    assert (versions / platform.python_version() / "bin" / "python").is_file()
    shutil.rmtree(mlflow_tmp)  # what MLflow does to its folder at exit
    assert (root / "versions" / "3.12.1" / "bin" / "python").is_file()
