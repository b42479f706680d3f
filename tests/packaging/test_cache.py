"""The content-keyed conversion cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flavorkit.packaging.cache import (
    build_scratch,
    cache_root,
    cached_dir,
    content_key,
    reclaim_interrupted_builds,
    tree_digest,
)

CORE = Path(__file__).resolve().parents[2] / "core"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAVORKIT_CACHE", str(tmp_path / "cache"))


def test_root_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_root() == tmp_path / "cache"
    monkeypatch.delenv("FLAVORKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "flavorkit"


def test_built_once_then_reused() -> None:
    calls: list[Path] = []

    def build(out: Path) -> None:
        calls.append(out)
        (out / "weights.bin").write_bytes(b"abc")

    first = cached_dir("kind", "k1", build, recipe={"x": 1})
    second = cached_dir("kind", "k1", build)
    assert first == second and len(calls) == 1
    assert sorted(p.name for p in first.iterdir()) == ["weights.bin"], "markers live beside the entry"
    assert first.with_name("k1.json").is_file()


def test_a_failed_build_leaves_no_entry_and_is_retried() -> None:
    def broken(out: Path) -> None:
        (out / "partial").write_text("half")
        raise RuntimeError("converter crashed")

    with pytest.raises(RuntimeError):
        cached_dir("kind", "k2", broken)
    kind = cache_root() / "kind"
    assert sorted(p.name for p in kind.iterdir() if not p.name.endswith(".lock")) == []
    ok = cached_dir("kind", "k2", lambda out: (out / "done").write_text("ok"))
    assert (ok / "done").is_file()


def test_concurrent_builders_build_once() -> None:
    calls = []
    gate = threading.Barrier(4)

    def build(out: Path) -> None:
        calls.append(1)
        (out / "f").write_text("x")

    def worker() -> None:
        gate.wait()
        cached_dir("kind", "k3", build)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1


def test_keys_follow_content_not_names(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    (a / "w.bin").write_bytes(b"123")
    b = tmp_path / "b"
    b.mkdir()
    (b / "w.bin").write_bytes(b"123")
    assert tree_digest(a) == tree_digest(b)
    (b / "w.bin").write_bytes(b"124")
    assert tree_digest(a) != tree_digest(b)
    assert content_key({"src": tree_digest(a), "p": "int4"}) != content_key({"src": tree_digest(a), "p": "fp32"})
    assert content_key({"a": 1, "b": 2}) == content_key({"b": 2, "a": 1})


KILLED_BUILDER = r"""
import time
from flavorkit.packaging.cache import cached_dir

def build(out):
    (out / "partial.bin").write_bytes(b"x" * 4096)
    time.sleep(600)

cached_dir("kind", "k4", build)
"""


def test_a_killed_build_is_reclaimed_by_the_next_build() -> None:
    env = dict(os.environ, PYTHONPATH=str(CORE))  # FLAVORKIT_CACHE is this test's private cache
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILDER], env=env)
    kind = cache_root() / "kind"
    deadline = time.monotonic() + 120
    while not list(kind.glob(".k4.tmp-*/partial.bin")):
        assert proc.poll() is None and time.monotonic() < deadline, "the builder never started its build"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    (left,) = kind.glob(".k4.tmp-*")

    other = cached_dir("another-kind", "k5", lambda out: (out / "f").write_text("y"))
    assert not left.exists(), "a build of any entry reclaims a killed build's folder"
    assert (other / "f").is_file()
    again = cached_dir("kind", "k4", lambda out: (out / "done").write_text("ok"))
    assert sorted(p.name for p in again.iterdir()) == ["done"]
    assert sorted(p.name for p in kind.iterdir()) == [".k4.lock", "k4", "k4.json"]


def test_a_build_in_progress_is_left_alone() -> None:
    started = threading.Event()
    finish = threading.Event()
    results: list[Path] = []

    def slow(out: Path) -> None:
        (out / "partial").write_text("half")
        started.set()
        finish.wait(60)
        (out / "rest").write_text("done")

    worker = threading.Thread(target=lambda: results.append(cached_dir("kind", "k6", slow)))
    worker.start()
    try:
        assert started.wait(60)
        (building,) = (cache_root() / "kind").glob(".k6.tmp-*")
        cached_dir("kind", "k7", lambda out: (out / "f").write_text("x"))
        assert reclaim_interrupted_builds() == []
        assert (building / "partial").is_file(), "a live build's folder stays"
    finally:
        finish.set()
        worker.join()
    assert sorted(p.name for p in results[0].iterdir()) == ["partial", "rest"]


def test_folders_the_cache_did_not_make_are_left_alone() -> None:
    kind = cache_root() / "kind"
    kind.mkdir(parents=True)
    no_lock = kind / ".mine.tmp-0123abcd"  # no .mine.lock beside it: not a cache build
    no_lock.mkdir()
    odd = kind / ".k8.tmp-notahexsuffix"
    odd.mkdir()
    (kind / ".k8.lock").write_text("")
    assert reclaim_interrupted_builds() == []
    assert no_lock.is_dir() and odd.is_dir()


def test_build_scratch_lives_beside_the_build_and_goes_with_it() -> None:
    seen: list[Path] = []

    def build(out: Path) -> None:
        with build_scratch(out) as scratch:
            seen.append(scratch)
            (scratch / "log.txt").write_text("tool output")
            assert scratch.parent == out.parent and scratch != out
            assert reclaim_interrupted_builds() == [], "a live build's scratch stays"
            assert (scratch / "log.txt").is_file()
        (out / "model.onnx").write_text("done")

    entry = cached_dir("kind", "k9", build)
    assert not seen[0].exists()
    assert sorted(p.name for p in entry.iterdir()) == ["model.onnx"]
    assert sorted(p.name for p in entry.parent.iterdir()) == [".k9.lock", "k9", "k9.json"]


def test_a_killed_builds_scratch_is_reclaimed() -> None:
    kind = cache_root() / "kind"
    kind.mkdir(parents=True)
    (kind / ".k10.lock").write_text("")
    leftover = kind / ".k10.tmp-0123abcd"  # as build_scratch names it, its builder gone
    leftover.mkdir()
    with pytest.raises(ValueError, match="not a cache build folder"), build_scratch(kind / "k10"):
        pass
    assert reclaim_interrupted_builds() == [leftover]
    assert not leftover.exists()
