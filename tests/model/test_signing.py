"""Signed models: ``package(signing_key=...)``, ``flavorkit verify --key`` and ``FLAVORKIT_TRUSTED_KEY``.

Keys are generated here with ``cryptography``; signing and verifying are the ``model-signing`` library's.
"""

from __future__ import annotations

import importlib.metadata as md
import shutil
from pathlib import Path

import mlflow
import pytest

import flavorkit
from flavorkit.cli import main
from flavorkit.errors import PackagingError, SignatureError
from flavorkit.model.manifest import SIGNATURE_FILE, build_manifest, write_manifest
from signing_keys import keypair

CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    private, public = keypair(folder, "signer")
    _, other = keypair(folder, "other")
    return {"private": private, "public": public, "other": other}


@pytest.fixture(scope="module")
def signed_dir(tmp_path_factory: pytest.TempPathFactory, tiny_ort: Path, keys: dict[str, Path]) -> Path:
    path = tmp_path_factory.mktemp("signed") / "model"
    flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=path, signing_key=keys["private"])
    return path


@pytest.fixture()
def signed_copy(signed_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(signed_dir, tmp_path / "copy"))


def _verify(capsys: pytest.CaptureFixture[str], uri: str | Path, key: Path | None) -> tuple[int, str]:
    code = main(["verify", str(uri), *(["--key", str(key)] if key else [])])
    out = capsys.readouterr()
    return code, out.out + out.err


def _weights(model: Path) -> Path:
    return next((model / "artifacts").glob("*/model.onnx.data"))


def test_a_signed_model_verifies_with_its_key(
    signed_dir: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert (signed_dir / SIGNATURE_FILE).is_file()
    code, out = _verify(capsys, signed_dir, keys["public"])
    assert code == 0, out
    assert out.startswith(f"OK: {signed_dir}: signed with the key {keys['public']}")


def test_an_unsigned_model_fails_verification(
    tiny_model_dir: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _verify(capsys, tiny_model_dir, keys["public"])
    assert code == 1
    assert f"{SIGNATURE_FILE}: missing: the model is unsigned" in out


def test_the_wrong_key_fails_verification(
    signed_dir: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _verify(capsys, signed_dir, keys["other"])
    assert code == 1
    assert f"signed with another key than {keys['other']}" in out


@pytest.mark.parametrize("edit", ["truncate", "resign-payload"])
def test_an_edited_signature_fails_verification(
    signed_copy: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str], edit: str
) -> None:
    import json

    sig = signed_copy / SIGNATURE_FILE
    if edit == "truncate":
        sig.write_text(sig.read_text()[:100])
    else:  # swap in another payload, keeping the signature bytes
        bundle = json.loads(sig.read_text())
        envelope = bundle["dsseEnvelope"]
        envelope["payload"] = envelope["payload"][:-8] + ("A" * 8 if envelope["payload"][-8:] != "A" * 8 else "B" * 8)
        sig.write_text(json.dumps(bundle))
    code, out = _verify(capsys, signed_copy, keys["public"])
    assert code == 1
    assert f"{SIGNATURE_FILE}: " in out


def test_a_changed_file_fails_verification_naming_it(
    signed_copy: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    target = signed_copy / "code" / "flavorkit" / "runtime" / "loaded.py"
    target.write_text(target.read_text() + "\n# edited\n")
    code, out = _verify(capsys, signed_copy, keys["public"])
    assert code == 1
    assert "code/flavorkit/runtime/loaded.py: changed since signing" in out


def test_an_added_file_fails_verification_naming_it(
    signed_copy: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (signed_copy / "code" / "extra_module.py").write_text("print('hi')\n")
    code, out = _verify(capsys, signed_copy, keys["public"])
    assert code == 1
    assert "code/extra_module.py: added since signing" in out


def test_a_removed_file_fails_verification_naming_it(
    signed_copy: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (signed_copy / "requirements.txt").unlink()
    code, out = _verify(capsys, signed_copy, keys["public"])
    assert code == 1
    assert "requirements.txt: removed since signing" in out


def test_an_edit_to_mlmodels_flavorkit_part_fails_verification(
    signed_copy: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    mlmodel = signed_copy / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace("generation: {}", "generation: {max_tokens: 3}"))
    assert "max_tokens: 3" in mlmodel.read_text()
    code, out = _verify(capsys, signed_copy, keys["public"])
    assert code == 1
    assert "MLmodel: its flavors, signature, metadata differ from the manifest's digest" in out


def test_changed_weights_with_a_rehashed_manifest_are_caught_only_by_the_signature(
    signed_copy: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = _weights(signed_copy)
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    weights.write_bytes(bytes(raw))
    write_manifest(build_manifest(signed_copy), signed_copy)  # what an attacker would do

    code, out = _verify(capsys, signed_copy, None)
    assert code == 0 and "integrity only" in out, "the manifest alone cannot see this"
    code, out = _verify(capsys, signed_copy, keys["public"])
    assert code == 1
    assert f"{weights.relative_to(signed_copy).as_posix()}: changed since signing" in out
    assert "flavorkit_manifest.json: changed since signing" in out

    monkeypatch.setenv("FLAVORKIT_TRUSTED_KEY", str(keys["public"]))
    with pytest.raises(SignatureError) as exc:
        mlflow.pyfunc.load_model(str(signed_copy))
    assert weights.relative_to(signed_copy).as_posix() in str(exc.value)


def test_byte_code_caches_fail_verify_but_not_a_trusted_load(
    signed_copy: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Python writes these into a writable model folder when it imports the shipped code: verify
    # reports them (a model is verified before it is loaded), the loader tolerates them.
    cache = signed_copy / "code" / "flavorkit" / "__pycache__"
    cache.mkdir()
    (cache / "runtime.cpython-311.pyc").write_bytes(b"\x00")
    code, out = _verify(capsys, signed_copy, keys["public"])
    assert code == 1 and "code/flavorkit/__pycache__/runtime.cpython-311.pyc" in out
    monkeypatch.setenv("FLAVORKIT_TRUSTED_KEY", str(keys["public"]))
    mlflow.pyfunc.load_model(str(signed_copy))


def test_a_trusted_key_admits_models_it_signed(
    signed_dir: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLAVORKIT_TRUSTED_KEY", str(keys["public"]))
    out = mlflow.pyfunc.load_model(str(signed_dir)).predict(CHAT)
    assert out[0]["usage"]["completion_tokens"] <= 3


def test_a_trusted_key_refuses_unsigned_models(
    tiny_model_dir: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLAVORKIT_TRUSTED_KEY", str(keys["public"]))
    with pytest.raises(SignatureError) as exc:
        mlflow.pyfunc.load_model(str(tiny_model_dir))
    assert exc.value.problems == [f"{SIGNATURE_FILE}: missing: the model is unsigned"]


def test_a_trusted_key_refuses_models_signed_by_another_key(
    signed_dir: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLAVORKIT_TRUSTED_KEY", str(keys["other"]))
    with pytest.raises(SignatureError, match="signed with another key"):
        mlflow.pyfunc.load_model(str(signed_dir))


def test_a_trusted_key_is_checked_even_when_verification_is_off(
    tiny_model_dir: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLAVORKIT_VERIFY_ARTIFACTS", "0")
    monkeypatch.setenv("FLAVORKIT_TRUSTED_KEY", str(keys["public"]))
    with pytest.raises(SignatureError, match="unsigned"):
        mlflow.pyfunc.load_model(str(tiny_model_dir))


def test_a_logged_and_registered_signed_model_verifies_by_uri(
    tiny_ort: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    info = flavorkit.package(
        model=str(tiny_ort), backend="onnx-cpu", registered_model_name="signed-chat", signing_key=keys["private"]
    )
    for uri in (f"runs:/{info.run_id}/model", "models:/signed-chat/1", info.model_uri):
        code, out = _verify(capsys, uri, keys["public"])
        assert code == 0, (uri, out)
        # flavorkit's own progress line, not MLflow's per-file "Downloading artifacts" bar
        assert f"[flavorkit] Downloading {uri}: done in " in out and "Downloading artifacts" not in out
    code, out = _verify(capsys, "models:/signed-chat/1", keys["other"])
    assert code == 1 and "another key" in out
    monkeypatch.setenv("FLAVORKIT_TRUSTED_KEY", str(keys["public"]))
    out = mlflow.pyfunc.load_model("models:/signed-chat/1").predict(CHAT)
    assert out[0]["usage"]["completion_tokens"] <= 3


def test_the_cli_packages_with_a_signing_key(
    tiny_ort: Path, tmp_path: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "m"
    args = ["package", str(tiny_ort), "--backend", "onnx-cpu", "--path", str(target)]
    assert main([*args, "--signing-key", str(keys["private"])]) == 0
    capsys.readouterr()
    code, out = _verify(capsys, target, keys["public"])
    assert code == 0, out
    reqs = (target / "requirements.txt").read_text().split()
    assert f"model-signing=={md.version('model-signing')}" in reqs, "a signed model can be verified where it runs"
    assert f"pyopenssl=={md.version('pyopenssl')}" in reqs, "model-signing imports it without declaring it"


def test_a_bad_signing_key_fails_before_any_work(tiny_ort: Path, tmp_path: Path, keys: dict[str, Path]) -> None:
    with pytest.raises(PackagingError, match="does not exist"):
        flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=tmp_path / "m", signing_key=tmp_path / "none")
    with pytest.raises(PackagingError, match="not a usable elliptic-curve private key"):
        flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=tmp_path / "m", signing_key=keys["public"])
    assert not (tmp_path / "m").exists()


def test_verify_without_a_key_checks_integrity_only(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLAVORKIT_TRUSTED_KEY", raising=False)
    code, out = _verify(capsys, tiny_model_dir, None)
    assert code == 0 and out.startswith(f"OK (integrity only): {tiny_model_dir}")


def test_verify_names_a_uri_it_cannot_read(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "no/such/model"]) == 2
    assert "no/such/model" in capsys.readouterr().err
