"""The "On a real cluster" recipe of docs/scaling-out.md, run end to end (issue: scale-out, item 1).

A real Spark standalone cluster on loopback (pyspark's bundled master and worker JVMs, the worker
with 2 cores), a real ``mlflow server`` (sqlite store, proxied artifacts), and the recipe's own
script, ``examples/spark/generate.py``, submitted with ``spark-submit --master spark://...`` as a
user would: the driver resolves ``models:/NAME@ALIAS`` through the server and the worker's
executors answer every row.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

import flavorkit
from helpers import PROMPTS, require_java
from serve_fixtures import free_port, server_process
from tracking_fixtures import mlflow_server

pyspark = pytest.importorskip("pyspark")

pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "spark" / "generate.py"
SPARK_HOME = Path(pyspark.__file__).resolve().parent
NAME = "tiny-chat-cluster"
ROWS = 16


@dataclass(frozen=True)
class Cluster:
    """A running standalone cluster: its master URL, the master's web UI, the worker's work folder."""

    master: str
    ui: str
    work_dir: Path

    def state(self) -> dict[str, Any]:
        """The master's JSON status (workers, active and completed applications)."""
        with urllib.request.urlopen(f"{self.ui}/json/", timeout=10) as resp:
            return dict(json.load(resp))


def _base_env(root: Path) -> dict[str, str]:
    """The environment of every Spark process here: loopback only, logs and configuration under ``root``."""
    conf = root / "conf"
    conf.mkdir(exist_ok=True)
    # No PYTHONPATH: Spark hands the JVM's to its Python workers, and what they import is under test.
    skip = ("SPARK_", "PYSPARK_", "MLFLOW_TRACKING", "PYTHONPATH", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    env.update(
        SPARK_HOME=str(SPARK_HOME),
        SPARK_CONF_DIR=str(conf),  # an empty one: nothing from a machine-wide spark-defaults.conf
        SPARK_LOG_DIR=str(root / "logs"),
        SPARK_LOCAL_IP="127.0.0.1",
        SPARK_LOCAL_DIRS=str(root / "local"),
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
        FK_TEST_SPARK_CLUSTER=str(root),  # inherited by every JVM and Python worker: finds leftovers
        # This virtualenv's bin first, as when it is activated (MLflow's env_manager="uv" runs `uv`).
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    return env


def _leftovers(root: Path) -> list[int]:
    """The processes still running with this cluster's marker in their environment (Linux ``/proc``)."""
    marker = f"FK_TEST_SPARK_CLUSTER={root}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:  # gone, or not ours
            continue
    return [pid for pid in found if pid != os.getpid()]


def _no_leftovers(root: Path) -> None:
    """Wait up to 20 s for the cluster's processes to exit after SIGTERM; SIGKILL and report any that did not."""
    deadline = time.monotonic() + 20
    while (pids := _leftovers(root)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not pids, f"processes of the Spark cluster outlived it (killed now): {pids}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A Spark master and one worker (2 cores, 2 GiB) on 127.0.0.1, ports chosen free; stopped with their JVMs."""
    require_java("Spark")
    root = tmp_path_factory.mktemp("spark-cluster")
    env = _base_env(root)
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    port, ui_port, worker_ui_port = free_port(), free_port(), free_port()
    master = f"spark://127.0.0.1:{port}"
    ui = f"http://127.0.0.1:{ui_port}"
    work_dir = root / "work"
    # The master's REST submission server would take the fixed port 6066: not needed, so off.
    master_env = {**env, "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false"}
    master_cmd = [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1"]
    master_cmd += ["--port", str(port), "--webui-port", str(ui_port)]
    worker_cmd = [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--port", "0"]
    worker_cmd += ["--webui-port", str(worker_ui_port), "--cores", "2", "--memory", "2g"]
    worker_cmd += ["--work-dir", str(work_dir), master]
    with ExitStack() as stack:
        stack.enter_context(server_process(master_cmd, f"{ui}/json/", env=master_env))
        stack.enter_context(server_process(worker_cmd, f"http://127.0.0.1:{worker_ui_port}/json/", env=env))
        running = Cluster(master, ui, work_dir)
        deadline = time.monotonic() + 60
        while running.state().get("aliveworkers") != 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not register with the master: {running.state()}")
            time.sleep(0.5)
        assert not Path("/proc").is_dir() or len(_leftovers(root)) >= 2, "the leftover check sees master and worker"
        yield running
    if Path("/proc").is_dir():
        _no_leftovers(root)


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on loopback (sqlite store, proxied artifacts): the team's registry."""
    with mlflow_server(tmp_path_factory.mktemp("tracking-server")) as url:
        yield url


@pytest.fixture(scope="module")
def registered(tracking_server: str, tiny_ort: Path) -> str:
    """The tiny onnx-cpu chat model packaged into the server's registry, greedy, with the alias ``champion``."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_server)
    try:
        mlflow.set_experiment("flavorkit-cluster")
        info = flavorkit.package(
            model=str(tiny_ort), backend="onnx-cpu", registered_model_name=NAME, generation={"temperature": 0.0}
        )
        MlflowClient().set_registered_model_alias(NAME, "champion", str(info.registered_model_version))
    finally:
        mlflow.set_tracking_uri(previous)
    return f"models:/{NAME}@champion"


def _requests() -> pd.DataFrame:
    """The job's input: an ``id``, ``messages`` as ``array<struct<role,content>>``, ``max_tokens``, ``temperature``."""
    rows = []
    for i in range(ROWS):
        messages = [{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} #{i}"}]
        if i % 3 == 1:
            messages = [{"role": "system", "content": "Be brief."}, *messages]
        rows.append({"id": i, "messages": messages, "max_tokens": 3 + i % 6, "temperature": 0.0})
    return pd.DataFrame(rows)


def submit(
    cluster: Cluster, tracking_server: str, *args: str, conf: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``spark-submit`` the example to the cluster as the docs show; the whole process group is killed on timeout.

    By default the driver and the executors run this interpreter, and ``spark.executorEnv.PYTHONPATH``
    makes the executors import this checkout's flavorkit rather than an installed one (a user's
    executors use their installed environment); ``conf`` adds to or replaces these settings.
    """
    env = _base_env(Path(cluster.work_dir).parent)
    env["MLFLOW_TRACKING_URI"] = tracking_server  # the driver's: it resolves the alias and downloads the model
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "core"), str(REPO / "plugins")])
    settings = {
        "spark.pyspark.python": sys.executable,
        "spark.executorEnv.PYTHONPATH": env["PYTHONPATH"],
        "spark.ui.enabled": "false",
        **(conf or {}),
    }
    cmd = [str(Path(sys.executable).parent / "spark-submit"), "--master", cluster.master]
    for key, value in settings.items():
        if value:
            cmd += ["--conf", f"{key}={value}"]
    cmd += [str(SCRIPT), *args]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"spark-submit ran past {timeout} s:\n{err[-4000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_spark_submit_answers_every_row_on_the_cluster_as_in_process_predict(
    cluster: Cluster, tracking_server: str, registered: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = tmp_path / "conversations.parquet", tmp_path / "answers"
    requests = _requests()
    requests.to_parquet(source)
    before = {app["id"] for app in cluster.state()["completedapps"]}

    proc = submit(cluster, tracking_server, registered, str(source), str(target))
    assert proc.returncode == 0, proc.stderr[-4000:]
    # The alias is resolved once, to the version the job then uses.
    pinned = f"models:/{NAME}/1"
    assert f"generate.py: answered {source} with {registered} ({pinned}) into {target} (2 partitions" in proc.stdout

    # The same model, loaded through the server in this process, answers the same rows in one batch.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    mlflow.set_tracking_uri(tracking_server)
    model = mlflow.pyfunc.load_model(registered)
    expected = [r["choices"][0]["message"]["content"] for r in model.predict(requests.drop(columns="id"))]
    answers = pd.read_parquet(target).sort_values("id").reset_index(drop=True)
    assert list(answers.columns) == ["id", "messages", "max_tokens", "temperature", "answer"]
    assert answers["id"].tolist() == list(range(ROWS)), "every row is answered once"
    assert answers["answer"].tolist() == expected
    assert any(expected), "the tiny model says something"

    # The job ran on the cluster: one finished application, whose executor ran its tasks in Python workers.
    apps = [app for app in cluster.state()["completedapps"] if app["id"] not in before]
    assert [(app["name"], app["state"]) for app in apps] == [("flavorkit-generate", "FINISHED")]
    executor_logs = list((cluster.work_dir / apps[0]["id"]).glob("*/stderr"))
    assert executor_logs, f"no executor ran in the worker's folder {cluster.work_dir}"
    log = "\n".join(p.read_text(errors="replace") for p in executor_logs)
    assert log.count("Starting Python task execution") >= 2, "each partition's UDF ran in a Python worker"
    assert log.count("Finished task") >= 2


def test_a_wrong_alias_fails_before_spark_starts_naming_it(
    cluster: Cluster, tracking_server: str, registered: str, tmp_path: Path
) -> None:
    source = tmp_path / "conversations.parquet"
    _requests().to_parquet(source)
    before = cluster.state()
    wrong = f"models:/{NAME}@nope"

    proc = submit(cluster, tracking_server, wrong, str(source), str(tmp_path / "answers"), timeout=120)
    # spark-submit passes on the script's exit code; it merges the script's stderr into its stdout.
    assert proc.returncode == 2, proc.stdout[-4000:]
    assert f"generate.py: error: model {wrong!r} cannot be loaded: " in proc.stdout
    reason = proc.stdout.split("cannot be loaded: ", 1)[1].splitlines()[0]
    assert reason == "INVALID_PARAMETER_VALUE: Registered model alias nope not found.", "MLflow's reason names it"
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "answers").exists()
    # No application reached the master: the URI is resolved before a SparkSession exists.
    after = cluster.state()
    assert after["activeapps"] == [] and len(after["completedapps"]) == len(before["completedapps"])


@pytest.mark.slow
def test_the_executors_need_only_the_models_requirements_and_pyarrow(
    cluster: Cluster, tracking_server: str, registered: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The executors' Python: a fresh virtualenv with the model's requirements.txt and pyarrow (Spark's
    # Arrow UDFs need it), no flavorkit (the model's code/ folder has it), no pyspark (Spark ships it).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    mlflow.set_tracking_uri(tracking_server)
    requirements = mlflow.pyfunc.get_model_dependencies(registered)
    venv = tmp_path / "executor-env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints" / "ci.txt")]
    install = subprocess.run(
        [*pip, "-r", requirements, "pyarrow"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    freeze = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
    assert "pyspark" not in freeze and "flavorkit" not in freeze and "mlflow-skinny" in freeze

    source, target = tmp_path / "conversations.parquet", tmp_path / "answers"
    requests = _requests()
    requests.to_parquet(source)
    proc = submit(
        cluster,
        tracking_server,
        registered,
        str(source),
        str(target),
        conf={
            "spark.pyspark.python": str(python),
            "spark.pyspark.driver.python": sys.executable,
            "spark.executorEnv.PYTHONPATH": "",
        },
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    expected = mlflow.pyfunc.load_model(registered).predict(requests.drop(columns="id"))
    answers = pd.read_parquet(target).sort_values("id")
    assert answers["answer"].tolist() == [r["choices"][0]["message"]["content"] for r in expected]


@pytest.mark.slow  # a third job: the module's quick set stays near a minute and a half
def test_check_rows_names_a_bad_row_on_the_cluster(
    cluster: Cluster, tracking_server: str, registered: str, tmp_path: Path
) -> None:
    # --check-rows runs flavorkit.spark.spark_udf: its row check travels to the executors by value.
    source, target = tmp_path / "conversations.parquet", tmp_path / "answers"
    requests = _requests()
    requests.loc[5, "messages"] = [{"role": "robot", "content": "beep"}]
    requests.to_parquet(source)
    proc = submit(
        cluster,
        tracking_server,
        registered,
        str(source),
        str(target),
        "--check-rows",
        "--partitions",
        "1",
        conf={"spark.task.maxFailures": "1"},
    )
    assert proc.returncode == 1, proc.stdout[-4000:]
    assert "generate.py: error: the job failed in a Spark task: " in proc.stdout
    assert re.search(
        r"flavorkit\.errors\.InvalidRequest: invalid request: field 'messages\[0\]\.role': Input should be 'system', "
        r"'user', 'assistant', 'developer' or 'tool'; got 'robot' \[Spark partition 0, row \d+\]",
        proc.stdout,
    ), proc.stdout[-4000:]
    assert "Traceback" not in proc.stdout.split("generate.py: error:")[0], "no driver-side traceback"
    assert not list(target.glob("*.parquet")), "nothing is written"


@pytest.mark.slow
def test_an_input_without_the_models_request_column_fails_naming_it(
    cluster: Cluster, tracking_server: str, registered: str, tmp_path: Path
) -> None:
    source = tmp_path / "conversations.parquet"
    pd.DataFrame({"id": [0], "text": ["hi"], "max_tokens": [3]}).to_parquet(source)
    proc = submit(cluster, tracking_server, registered, str(source), str(tmp_path / "answers"), timeout=120)
    assert proc.returncode == 2, proc.stdout[-4000:]
    assert (
        f"generate.py: error: input {str(source)!r} has no column 'messages' (the model's request fields: "
        "messages, temperature, max_tokens, stop, n, stream, top_p, top_k, seed, user, presence_penalty, "
        "frequency_penalty, logit_bias, store, metadata, service_tier, parallel_tool_calls, prediction, modalities, "
        "tools, tool_choice, response_format, logprobs, top_logprobs; "
        "the input's columns: id, text, max_tokens)"
    ) in proc.stdout
    assert "Traceback" not in proc.stdout


@pytest.mark.slow
def test_env_manager_uv_builds_the_models_environment_on_the_executor(
    cluster: Cluster, tracking_server: str, registered: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("uv", path=_base_env(tmp_path)["PATH"]) is None:
        pytest.skip("uv is not installed (pip install uv): env_manager='uv' cannot build the model's environment")
    source, target = tmp_path / "conversations.parquet", tmp_path / "answers"
    requests = _requests()
    requests.to_parquet(source)
    before = {app["id"] for app in cluster.state()["completedapps"]}
    proc = submit(
        cluster,
        tracking_server,
        registered,
        str(source),
        str(target),
        "--env-manager",
        "uv",
        conf={"spark.executorEnv.PYTHONPATH": ""},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    mlflow.set_tracking_uri(tracking_server)
    expected = mlflow.pyfunc.load_model(registered).predict(requests.drop(columns="id"))
    answers = pd.read_parquet(target).sort_values("id")
    assert answers["answer"].tolist() == [r["choices"][0]["message"]["content"] for r in expected]
    # The executor built the model's environment with uv and answered through a scoring server in it.
    (app,) = [app for app in cluster.state()["completedapps"] if app["id"] not in before]
    log = "\n".join(p.read_text(errors="replace") for p in (cluster.work_dir / app["id"]).glob("*/stderr"))
    assert re.search(r"Creating a new environment in \S+ with python version [\d.]+ using uv", log)
    assert "scoring_server" in log
