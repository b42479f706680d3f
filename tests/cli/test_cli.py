"""The ``flavorkit package`` command's flags and the FLAVORKIT_PROGRESS switch.

The command runs in-process through ``flavorkit.cli.main`` (the console script's entry point) on
the echo backend, a real pure-Python plugin installed as a throwaway distribution.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.models import Model

from flavorkit.backend.registry import get_registry
from flavorkit.cli import main
from flavorkit.packaging.progress import step
from plugin_fixtures import ECHO_BACKEND, make_distribution


@pytest.fixture
def echo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = make_distribution(
        tmp_path / "site", "fk-cli", modules={"fk_echo": ECHO_BACKEND}, backends={"echo": "fk_echo:backend"}
    )
    monkeypatch.syspath_prepend(str(root))
    get_registry(refresh=True)
    yield tmp_path
    sys.modules.pop("fk_echo", None)
    monkeypatch.undo()
    get_registry(refresh=True)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any] | None, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    out = json.loads(captured.out) if captured.out.strip() else None
    return code, out, captured.err


def _meta(path: Path) -> dict[str, Any]:
    return dict(Model.load(str(path)).metadata["flavorkit"])


def test_package_to_a_path_with_generation_defaults(echo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = echo / "m"
    code, out, _ = _run(
        capsys,
        "package",
        "src",
        "--backend",
        "echo",
        "--path",
        str(target),
        "--generation",
        "temperature=0",
        "--generation",
        "max_tokens=3",
        "--generation",
        'stop=["c"]',
    )
    assert code == 0
    assert out == {"model_uri": str(target), "registered_model_version": None}
    meta = _meta(target)
    assert meta["generation"] == {"temperature": 0.0, "max_tokens": 3, "stop": ["c"]}
    assert meta["task"] == "llm/v1/chat" and meta["backend"] == "echo"
    answer = mlflow.pyfunc.load_model(str(target)).predict({"messages": [{"role": "user", "content": "abcdef"}]})[0]
    assert answer["choices"][0]["message"]["content"] == "ab"  # cut by the default stop "c"


def test_package_refuses_to_overwrite_unless_asked(echo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = echo / "m"
    assert _run(capsys, "package", "one", "--backend", "echo", "--path", str(target))[0] == 0
    before = (target / "MLmodel").read_text()
    code, out, err = _run(capsys, "package", "two", "--backend", "echo", "--path", str(target))
    assert (code, out) == (2, None)
    assert err.startswith("flavorkit: error: ") and "already exists; pass overwrite=True to replace it" in err
    assert (target / "MLmodel").read_text() == before
    code, out, _ = _run(capsys, "package", "two", "--backend", "echo", "--path", str(target), "--overwrite")
    assert code == 0 and out is not None and out["model_uri"] == str(target)
    assert _meta(target)["model_name"] == "two"


def test_package_with_the_text_generation_task(echo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = echo / "m"
    args = ["package", "src", "--backend", "echo", "--path", str(target), "--task", "text-generation"]
    # The echo backend predates spec 4: no encode_text hook, so a raw text-generation model is refused.
    code, _, err = _run(capsys, *args)
    assert code == 2 and "does not implement the encode_text hook" in err and "--prompt-format chat_template" in err
    assert not target.exists()
    code, _, _ = _run(capsys, *args, "--prompt-format", "chat_template")
    assert code == 0
    assert _meta(target)["task"] == "text-generation"
    assert _meta(target)["prompt_format"] == "chat_template"
    assert mlflow.pyfunc.load_model(str(target)).predict({"prompt": "xyz"}) == ["xyz"]
    with pytest.raises(SystemExit) as exc:
        main(["package", "src", "--backend", "echo", "--task", "summarise"])
    assert exc.value.code == 2
    assert "invalid choice: 'summarise'" in capsys.readouterr().err


def test_package_logs_and_registers(echo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "package", "src", "--backend", "echo", "--register", "echo-chat", "--alias", "prod")
    assert code == 0 and out is not None
    assert out["registered_model_version"] == 1
    assert out["model_uri"].startswith("models:/")
    version = mlflow.MlflowClient().get_model_version("echo-chat", "1")
    assert version.status == "READY"
    assert version.aliases == ["prod"]
    model = mlflow.pyfunc.load_model("models:/echo-chat@prod")
    assert (
        model.predict({"messages": [{"role": "user", "content": "hi"}]})[0]["choices"][0]["message"]["content"] == "hi"
    )
    assert mlflow.active_run() is None, "the run the command started is ended"


def test_register_with_a_path_is_refused_naming_the_field(echo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "package", "src", "--backend", "echo", "--path", str(echo / "m"), "--register", "x")
    assert (code, out) == (2, None)
    assert "field 'registered_model_name'" in err
    assert not (echo / "m").exists()


def test_bad_generation_settings_name_the_field(echo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(
        capsys, "package", "src", "--backend", "echo", "--path", str(echo / "m"), "--generation", "top_p=7"
    )
    assert code == 2
    assert "field 'generation.top_p'" in err
    with pytest.raises(SystemExit) as exc:
        main(["package", "src", "--backend", "echo", "--generation", "temperature"])
    assert str(exc.value.code) == "flavorkit: --generation must look like key=value, got 'temperature'"
    with pytest.raises(SystemExit) as exc:
        main(["package", "src", "--backend", "echo", "--option", "=3"])
    assert str(exc.value.code) == "flavorkit: --option must look like key=value, got '=3'"


def test_progress_lines_and_the_switch_that_silences_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FLAVORKIT_PROGRESS", raising=False)
    with step("converting"):
        pass
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0] == "[flavorkit] converting ..."
    assert lines[1].startswith("[flavorkit] converting: done in ") and lines[1].endswith("s")
    with pytest.raises(ValueError, match="boom"), step("exporting"):
        raise ValueError("boom")
    assert capsys.readouterr().err.splitlines()[-1].startswith("[flavorkit] exporting: failed in ")
    monkeypatch.setenv("FLAVORKIT_PROGRESS", "0")
    with step("converting"):
        pass
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("FLAVORKIT_PROGRESS", "1")
    with step("converting"):
        pass
    assert "[flavorkit] converting" in capsys.readouterr().err


def test_a_nested_step_beats_alone_so_each_beat_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    from flavorkit.packaging import progress

    monkeypatch.delenv("FLAVORKIT_PROGRESS", raising=False)
    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.05)
    with step("Packaging"):
        with step("Converting"):
            time.sleep(0.6)
        during = capsys.readouterr().err.splitlines()
        time.sleep(0.3)
    after = capsys.readouterr().err.splitlines()
    # While converting, only "Converting" reported; once it ended, "Packaging" beat again.
    assert sum(line.startswith("[flavorkit] Converting ... still running") for line in during) > 4
    assert not any(line.startswith("[flavorkit] Packaging ... still running") for line in during), during
    assert any(line.startswith("[flavorkit] Packaging ... still running") for line in after), after
    assert after[-1].startswith("[flavorkit] Packaging: done in ")


def test_on_a_terminal_other_output_during_a_step_starts_on_a_line_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os
    import pty
    import time

    monkeypatch.delenv("FLAVORKIT_PROGRESS", raising=False)
    master, slave = pty.openpty()
    terminal = open(slave, "w", encoding="utf-8", closefd=True)  # noqa: SIM115 - closed below
    monkeypatch.setattr(sys, "stderr", terminal)
    try:
        with step("Packaging"):
            time.sleep(0.7)  # one live beat: "\r[flavorkit] Packaging ...     0s", line left open
            print("Successfully registered model 'm'.", file=sys.stderr)  # as MLflow's eprint does
            assert sys.stderr is not terminal  # the proxy is in place while the step runs
        assert sys.stderr is terminal  # and gone after it
        terminal.flush()
        time.sleep(0.1)
        shown = os.read(master, 65536).decode()
    finally:
        terminal.close()
        os.close(master)
    lines = shown.replace("\r\n", "\n").split("\n")
    assert "Successfully registered model 'm'." in lines, shown
    assert lines[-2].startswith("\r[flavorkit] Packaging ... done in "), shown


def test_packaging_draws_no_copy_progress_bars(tiny_ort: Path, tmp_path: Path) -> None:
    import os
    import subprocess

    target = tmp_path / "m"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"}  # conftest sets it
    cmd = [sys.executable, "-m", "flavorkit.cli", "package", str(tiny_ort), "--backend", "onnx-cpu"]
    proc = subprocess.run(
        [*cmd, "--path", str(target)], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["model_uri"] == str(target)
    assert "Downloading artifacts" not in proc.stderr, "MLflow's copy progress bars are off while packaging"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--join-wait", "-1"], "argument --join-wait: '-1' is out of range (allowed: number, at least 0)"),
        (["--max-batch", "0"], "argument --max-batch: '0' is out of range (allowed: whole number, at least 1)"),
        (["--max-queue", "2.5"], "argument --max-queue: '2.5' is not a whole number (allowed: whole number, "),
        (["--request-timeout", "0"], "argument --request-timeout: '0' is out of range (allowed: number, above 0)"),
        (["--port", "70000"], "argument --port: '70000' is out of range (allowed: whole number, from 0 to 65535)"),
        (["--batching", "eager"], "argument --batching: invalid choice: 'eager'"),
    ],
)
def test_serve_refuses_out_of_range_options_before_loading_anything(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "/no/such/model", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
