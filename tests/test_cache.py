"""The content-keyed conversion cache."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from flavorkit.cache import cache_root, cached_dir, content_key, tree_digest


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
