"""The integrity checks seen from outside: FLAVORKIT_VERIFY_ARTIFACTS and re-verification after saving.

Written against public behaviour only (package(), mlflow.pyfunc.load_model, the environment variable
and files changed on disk), so they hold whatever the manifest code looks like inside.
The backends are real pure-Python plugins installed as throwaway distributions.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

import flavorkit
from flavorkit.backend.registry import get_registry
from flavorkit.errors import IntegrityError
from flavorkit.model.manifest import MANIFEST_FILE
from plugin_fixtures import ECHO_BACKEND, make_distribution

#: A file that stat() reports as empty and whose content changes every 10 ms: what the packager
#: hashed is never what MLflow copies (the sizes differ, and so does the content a moment later).
FRESH = "/proc/uptime"

#: The echo backend plus a second artifact that changes between hashing and MLflow's copy.
CHANGING_BACKEND = ECHO_BACKEND.replace(
    'return Artifacts(files={"echo": str(out)}, requirements=[])',
    f'return Artifacts(files={{"echo": str(out), "fresh": {FRESH!r}}}, requirements=[])',
)

#: The packager's complaint when MLflow's copy of the "fresh" artifact is not what was hashed.
COPY_DIFFERS = "artifacts/uptime: MLflow's copy differs from 'fresh' as the backend returned it"

HELLO = {"messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def echo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Install the echo and changing backends; yield a scratch folder."""
    root = make_distribution(
        tmp_path / "site",
        "fk-verify",
        modules={"fk_echo": ECHO_BACKEND, "fk_changing": CHANGING_BACKEND},
        backends={"echo": "fk_echo:backend", "changing": "fk_changing:backend"},
    )
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv("FLAVORKIT_VERIFY_ARTIFACTS", raising=False)
    get_registry(refresh=True)
    yield tmp_path
    for mod in ("fk_echo", "fk_changing"):
        sys.modules.pop(mod, None)
    monkeypatch.undo()
    get_registry(refresh=True)


def _artifact_file(model: Path) -> Path:
    """The echo backend's one packaged file inside a saved model."""
    (found,) = (p for p in (model / "artifacts").rglob("config.txt"))
    return found


def _saved(folder: Path) -> Path:
    flavorkit.package(model="source-text", backend="echo", path=folder / "model")
    return folder / "model"


def test_a_tampered_model_is_refused_by_default_and_with_verification_on(
    echo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _saved(echo)
    _artifact_file(model).write_text("changed after packaging")
    for value in (None, "1", "yes"):
        if value is None:
            monkeypatch.delenv("FLAVORKIT_VERIFY_ARTIFACTS", raising=False)
        else:
            monkeypatch.setenv("FLAVORKIT_VERIFY_ARTIFACTS", value)
        with pytest.raises(IntegrityError) as exc:
            mlflow.pyfunc.load_model(str(model))
        assert "echo/config.txt" in str(exc.value)


def test_verification_off_loads_a_changed_model(echo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _saved(echo)
    _artifact_file(model).write_text("changed after packaging")
    (_artifact_file(model).parent / "extra.bin").write_bytes(b"\x00" * 3)
    monkeypatch.setenv("FLAVORKIT_VERIFY_ARTIFACTS", "0")
    loaded = mlflow.pyfunc.load_model(str(model))
    assert loaded.predict(HELLO)[0]["choices"][0]["message"]["content"] == "hello"


def test_verification_off_loads_a_model_whose_manifest_is_gone(echo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _saved(echo)
    manifest = model / MANIFEST_FILE
    assert manifest.is_file(), "the model holds a manifest at its root"
    manifest.unlink()
    with pytest.raises(IntegrityError) as refused:
        mlflow.pyfunc.load_model(str(model))
    assert "manifest" in str(refused.value)
    monkeypatch.setenv("FLAVORKIT_VERIFY_ARTIFACTS", "0")
    assert mlflow.pyfunc.load_model(str(model)).predict(HELLO)[0]["choices"][0]["finish_reason"] == "stop"


def test_an_untouched_model_loads_with_verification_on(echo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _saved(echo)
    monkeypatch.setenv("FLAVORKIT_VERIFY_ARTIFACTS", "1")
    assert mlflow.pyfunc.load_model(str(model)).predict(HELLO)[0]["choices"][0]["message"]["content"] == "hello"


@pytest.mark.skipif(not os.path.exists(FRESH), reason=f"needs {FRESH} (Linux)")
def test_a_copy_that_differs_from_what_was_hashed_fails_packaging_and_leaves_nothing(echo: Path) -> None:
    target = echo / "out" / "model"
    with pytest.raises(IntegrityError) as exc:
        flavorkit.package(model="source-text", backend="changing", path=target)
    assert exc.value.problems == [COPY_DIFFERS], exc.value.problems
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir()] == [], "no staging folder is left behind"


@pytest.mark.skipif(not os.path.exists(FRESH), reason=f"needs {FRESH} (Linux)")
def test_a_logged_copy_that_differs_from_what_was_hashed_fails_logging(echo: Path) -> None:
    with pytest.raises(IntegrityError) as exc:
        flavorkit.package(model="source-text", backend="changing")
    assert exc.value.problems == [COPY_DIFFERS], exc.value.problems
    run = mlflow.last_active_run()
    assert run is not None and run.info.status == "FAILED"


def test_every_bad_file_is_named_once(echo: Path) -> None:
    model = _saved(echo)
    packaged = _artifact_file(model)
    (packaged.parent / "extra.bin").write_bytes(b"x")
    packaged.unlink()
    with pytest.raises(IntegrityError) as exc:
        mlflow.pyfunc.load_model(str(model))
    problems = exc.value.problems
    assert len(problems) == 2, problems
    assert [p.split(":")[0] for p in sorted(problems)] == ["artifacts/echo/config.txt", "artifacts/echo/extra.bin"]
