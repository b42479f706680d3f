"""Packaging killed with SIGKILL at chosen moments, in real child processes, then packaging again.

The children package the tiny ORT model with the real onnx-cpu backend and real MLflow. They are
killed either from here, once polling sees a given filesystem state, or by themselves right after
a chosen real ``os.replace`` (the test harness wraps it in the child; nothing in flavorkit or the
backend is replaced), which hits the microsecond window between moving an old model aside and
renaming the new one in. The next ``flavorkit.package`` call must leave no staging folder behind
and the output path must hold a complete, loadable model: the old one or the new one.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import pytest

import flavorkit
from flavorkit.errors import PackagingError
from flavorkit.packaging.staging import LOCK_NAME, open_stage, reclaim, scratch_root

ROOT = Path(__file__).resolve().parents[2]

# The child packages argv[1] to argv[2] (overwrite=True) with max_tokens=9 as its generation
# default, so its model is told apart from the "old" one (max_tokens=7). argv[3] picks where it
# stops: "run" (killed from outside), "kill-after-move-aside", "kill-after-swap", or "wait-for:<file>"
# (hold before the final rename until <file> exists).
CHILD = r"""
import os, signal, sys, time
from pathlib import Path

import flavorkit

source, target, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
real_replace = os.replace


def from_stage(path):
    return ".flavorkit-" in Path(path).parent.name


def replace(src, dst):
    if mode == "kill-after-move-aside" and Path(src) == target and Path(dst).name == "old" and from_stage(dst):
        real_replace(src, dst)
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "kill-after-swap" and Path(dst) == target and from_stage(src):
        real_replace(src, dst)
        os.kill(os.getpid(), signal.SIGKILL)
    if mode.startswith("wait-for:") and Path(dst) == target and from_stage(src):
        while not os.path.exists(mode.partition(":")[2]):
            time.sleep(0.02)
    return real_replace(src, dst)


os.replace = replace
path = None if sys.argv[2] == "-" else target
flavorkit.package(model=source, backend="onnx-cpu", path=path, overwrite=True, generation={"max_tokens": 9})
print("packaged", flush=True)
"""


def _start(source: Path, target: Path | str, mode: str, tmpdir: Path) -> subprocess.Popen[str]:
    tmpdir.mkdir(exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "core"), str(ROOT / "plugins"), env.get("PYTHONPATH")) if p
    )
    env["TMPDIR"] = str(tmpdir)  # the child's own, to see what it leaves there
    cmd = [sys.executable, "-c", CHILD, str(source), str(target), mode]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_until(proc: subprocess.Popen[str], ready: Callable[[], bool], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the child ended (rc {proc.returncode}) before {what}:\n{proc.communicate()[0][-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the child was killed, not finished"


def _wait_killed(proc: subprocess.Popen[str]) -> None:
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == -signal.SIGKILL, out[-3000:]


def _stages(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.name.startswith(".") and ".flavorkit-" in p.name)


def _max_tokens(model_dir: Path) -> int:
    meta = mlflow.models.Model.load(str(model_dir)).metadata["flavorkit"]
    return int(meta["generation"]["max_tokens"])


def _assert_loads_and_answers(model_dir: Path) -> None:
    model = mlflow.pyfunc.load_model(str(model_dir))  # verifies every artifact's sha256
    out = model.predict({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0})
    assert out[0]["object"] == "chat.completion"


def _package_old(source: Path, target: Path) -> None:
    flavorkit.package(model=str(source), backend="onnx-cpu", path=target, generation={"max_tokens": 7})


def _no_flavorkit_temp(tmpdir: Path) -> None:
    assert [p.name for p in tmpdir.iterdir() if "flavorkit" in p.name] == [], "no scratch loose in TMPDIR"


def _stage_has(parent: Path, relative: str) -> Callable[[], bool]:
    return lambda: any((s / LOCK_NAME).is_file() and (s / relative).exists() for s in _stages(parent))


@pytest.mark.parametrize(
    "moment",
    [
        pytest.param("work", id="staging-folder-just-created"),
        pytest.param("model", id="while-mlflow-saves"),
    ],
)
def test_a_kill_while_packaging_is_cleaned_up_by_the_next_call(tiny_ort: Path, tmp_path: Path, moment: str) -> None:
    out = (tmp_path / "out").resolve()
    out.mkdir()
    proc = _start(tiny_ort, out / "m", "run", tmp_path / "child-tmp")
    _wait_until(proc, _stage_has(out, moment), f"the staging folder's {moment}/")
    _kill(proc)
    assert len(_stages(out)) == 1, "the killed run left its staging folder"
    assert not (out / "m").exists(), "and nothing at the output path"
    _no_flavorkit_temp(tmp_path / "child-tmp")

    flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=out / "other")
    assert _stages(out) == [], "the next call to the same folder reclaimed it"
    assert sorted(p.name for p in out.iterdir()) == ["other"]
    _assert_loads_and_answers(out / "other")


def test_a_kill_between_moving_the_old_model_aside_and_renaming_the_new_one_in(tiny_ort: Path, tmp_path: Path) -> None:
    target = (tmp_path / "m").resolve()
    _package_old(tiny_ort, target)
    proc = _start(tiny_ort, target, "kill-after-move-aside", tmp_path / "child-tmp")
    _wait_killed(proc)
    assert not target.exists(), "the kill hit the window: the old model was aside, the new one not yet in"
    (stage,) = _stages(tmp_path)
    assert (stage / "old" / "MLmodel").is_file() and (stage / "model" / "MLmodel").is_file()

    with pytest.raises(PackagingError, match="already exists"):
        flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=target)
    assert _max_tokens(target) == 7, "the next call put the old model back, then refused to replace it unasked"
    assert _stages(tmp_path) == []
    _assert_loads_and_answers(target)


def test_a_kill_right_after_the_new_model_is_renamed_in(tiny_ort: Path, tmp_path: Path) -> None:
    target = (tmp_path / "m").resolve()
    _package_old(tiny_ort, target)
    proc = _start(tiny_ort, target, "kill-after-swap", tmp_path / "child-tmp")
    _wait_killed(proc)
    (stage,) = _stages(tmp_path)
    assert (stage / "old" / "MLmodel").is_file(), "the old model was still waiting to be deleted"
    assert _max_tokens(target) == 9

    flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=tmp_path / "other")
    assert _stages(tmp_path) == []
    assert _max_tokens(target) == 9, "the complete new model stays; the old one is deleted"
    _assert_loads_and_answers(target)


def test_concurrent_packagers_to_one_folder_leave_each_other_alone(tiny_ort: Path, tmp_path: Path) -> None:
    out = (tmp_path / "out").resolve()
    out.mkdir()
    go = tmp_path / "go"
    proc = _start(tiny_ort, out / "a", f"wait-for:{go}", tmp_path / "child-tmp")
    try:
        _wait_until(proc, _stage_has(out, "model/MLmodel"), "the child's model saved in its staging folder")
        (live,) = _stages(out)
        flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=out / "b", generation={"max_tokens": 7})
        assert _stages(out) == [live], "the other packager's live staging folder was left alone"
        assert reclaim(out) == [] and _stages(out) == [live]
    finally:
        go.touch()
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["a", "b"]
    assert (_max_tokens(out / "a"), _max_tokens(out / "b")) == (9, 7)
    _assert_loads_and_answers(out / "a")


def test_a_killed_logging_run_is_cleaned_up_by_the_next_one(
    tiny_ort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLAVORKIT_CACHE", str(tmp_path / "cache"))
    root = scratch_root()
    assert root == tmp_path / "cache" / "staging"
    proc = _start(tiny_ort, "-", "run", tmp_path / "child-tmp")
    _wait_until(proc, lambda: root.is_dir() and _stage_has(root, "work/code")(), "the logging run's staging folder")
    _kill(proc)
    assert len(_stages(root)) == 1
    _no_flavorkit_temp(tmp_path / "child-tmp")

    info = flavorkit.package(model=str(tiny_ort), backend="onnx-cpu")
    assert _stages(root) == [], "the next logging run reclaimed it"
    assert list(root.iterdir()) == []
    mlflow.pyfunc.load_model(info.model_uri)


def test_when_the_final_rename_fails_the_old_model_is_restored(
    tiny_ort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = (tmp_path / "m").resolve()
    _package_old(tiny_ort, target)
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    real_replace = os.replace
    calls: list[tuple[str, str]] = []

    def failing_final_rename(src: Any, dst: Any) -> None:
        calls.append((str(src), str(dst)))
        if Path(dst) == target and Path(src).name == "model" and ".flavorkit-" in Path(src).parent.name:
            raise OSError(errno.EIO, "Input/output error", str(dst))  # only the new model's rename fails
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_final_rename)
    with pytest.raises(PackagingError, match="Input/output error"):
        flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=target, overwrite=True)
    monkeypatch.setattr(os, "replace", real_replace)

    assert any(Path(src) == target for src, _ in calls), "the old model had been moved aside"
    after = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert after == before, "the old model is back, byte for byte"
    assert _stages(tmp_path) == []
    _assert_loads_and_answers(target)


# --- the staging folders themselves (no model) ---------------------------------------------------

HOLDER = r"""
import sys, time
from pathlib import Path
from flavorkit.packaging.staging import open_stage

with open_stage(Path(sys.argv[1])) as stage:
    (stage.work / "scratch.bin").write_bytes(b"x" * 1024)
    print(stage.path, flush=True)
    time.sleep(600)
"""


def test_a_folder_is_reclaimed_only_once_its_owner_is_dead(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "core"))
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "m")], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        stage = Path(proc.stdout.readline().strip())
        assert stage.parent == tmp_path and (stage / "work" / "scratch.bin").is_file()
        owner = json.loads((stage / LOCK_NAME).read_text())
        assert owner["target"] == "m" and owner["pid"] == proc.pid
        assert reclaim(tmp_path) == [] and stage.is_dir(), "a live owner's folder stays"
    finally:
        proc.kill()
        proc.wait()
    assert reclaim(tmp_path) == [stage] and not stage.exists(), "a dead owner's folder goes, whatever its PID now"


def test_only_marked_folders_are_ever_touched(tmp_path: Path) -> None:
    unmarked = tmp_path / ".m.flavorkit-notours"
    unmarked.mkdir()
    (unmarked / "data").write_text("someone else's")
    foreign = tmp_path / ".m.flavorkit-foreign"
    foreign.mkdir()
    (foreign / LOCK_NAME).write_text(json.dumps({"something": "else"}))
    escaping = tmp_path / ".m.flavorkit-escaping"
    escaping.mkdir()
    (escaping / LOCK_NAME).write_text(json.dumps({"flavorkit_stage": 1, "target": "../outside"}))
    (escaping / "old").mkdir()
    (tmp_path / ".m.flavorkit-file").write_text("a file, not a folder")
    linked = tmp_path / ".m.flavorkit-link"
    linked.symlink_to(unmarked, target_is_directory=True)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert reclaim(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (unmarked / "data").read_text() == "someone else's"
    assert not (tmp_path.parent / "outside").exists()


def test_threads_never_reclaim_each_others_folders(tmp_path: Path) -> None:
    inside = threading.Barrier(3)
    leave = threading.Event()
    seen: list[Path] = []

    def hold() -> None:
        with open_stage(tmp_path / "m") as stage:
            seen.append(stage.path)
            inside.wait()
            leave.wait(30)

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait()
    try:
        assert reclaim(tmp_path) == []
        assert sorted(seen) == _stages(tmp_path) and len(seen) == 2
    finally:
        leave.set()
        for t in threads:
            t.join()
    assert _stages(tmp_path) == []


def test_an_old_model_that_cannot_be_put_back_is_kept_for_the_next_call(
    tiny_ort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = (tmp_path / "m").resolve()
    _package_old(tiny_ort, target)
    real_replace = os.replace

    def no_rename_onto_target(src: Any, dst: Any) -> None:
        if Path(dst) == target and ".flavorkit-" in Path(src).parent.name:
            raise OSError(errno.EIO, "Input/output error", str(dst))  # neither the new nor the old model
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", no_rename_onto_target)
    with pytest.raises(PackagingError, match="Input/output error"):
        flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=target, overwrite=True)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not target.exists()
    (stage,) = _stages(tmp_path)
    assert _max_tokens(stage / "old") == 7, "the old model was kept, not deleted with the staging folder"

    with pytest.raises(PackagingError, match="already exists"):
        flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=target)
    assert _max_tokens(target) == 7 and _stages(tmp_path) == []
    _assert_loads_and_answers(target)


def test_an_output_folder_that_cannot_hold_a_staging_folder_is_named(tiny_ort: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(PackagingError, match=r"cannot create a staging folder in .*a-file"):
        flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=blocker / "m")
    assert blocker.read_text() == "not a folder"
