"""``flavorkit serve --trusted-key``: the installed flavorkit checks the signature before loading anything."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import flavorkit
from flavorkit.cli import main
from flavorkit.errors import SignatureError
from serve_fixtures import running
from signing_keys import keypair

openai = pytest.importorskip("openai")
pytest.importorskip("prometheus_client")

from flavorkit.serve import create_app  # noqa: E402


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, tiny_ort: Path) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("trusted")
    private, public = keypair(folder, "signer")
    _, other = keypair(folder, "other")
    model = folder / "model"
    flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=model, signing_key=private)
    return model, public, other


def test_a_model_signed_with_the_trusted_key_is_served(signed: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, public, _ = signed
    copy = Path(shutil.copytree(model, tmp_path / "model"))
    for _restart in range(2):  # the second start checks the folder the first one served
        with running(create_app(str(copy), trusted_key=public)) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            answer = client.chat.completions.create(
                model="model", messages=[{"role": "user", "content": "Hello"}], max_tokens=3, temperature=0
            )
            assert answer.choices[0].finish_reason in ("stop", "length")
            assert answer.usage is not None and 1 <= answer.usage.completion_tokens <= 3
        assert not list(copy.rglob("__pycache__")), "serving wrote no byte-code into the verified model"


def test_another_key_is_refused_before_loading(signed: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, _, other = signed
    copy = Path(shutil.copytree(model, tmp_path / "model"))
    with pytest.raises(SignatureError, match="another key"):
        create_app(str(copy), trusted_key=other)
    assert not list(copy.rglob("__pycache__")), "none of the model's code ran"


def test_a_tampered_file_is_named_and_nothing_of_the_model_runs(
    signed: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, public, _ = signed
    copy = Path(shutil.copytree(model, tmp_path / "model"))
    runtime = copy / "code" / "flavorkit" / "runtime" / "loaded.py"
    runtime.write_text(runtime.read_text() + "\nraise SystemExit('attacker code ran')\n")
    with pytest.raises(SignatureError, match=r"code/flavorkit/runtime/loaded\.py"):
        create_app(str(copy), trusted_key=public)
    assert main(["serve", str(copy), "--trusted-key", str(public), "--port", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"flavorkit serve: refusing to load {copy}: ") and "code/flavorkit/runtime/loaded.py" in err
    assert not list(copy.rglob("__pycache__")), "none of the model's code ran"


def test_the_environment_names_the_trusted_key(
    signed: tuple[Path, Path, Path], tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, public, _ = signed
    monkeypatch.setenv("FLAVORKIT_TRUSTED_KEY", str(public))
    unsigned = Path(shutil.copytree(tiny_model_dir, tmp_path / "unsigned"))
    with pytest.raises(SignatureError, match="unsigned"):
        create_app(str(unsigned))
