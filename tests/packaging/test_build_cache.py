"""``flavorkit.sdk.cached_build``: the logged subprocess build behind the model builder and the Optimum export.

Every build here is a real subprocess (this Python running a few lines), in a private cache.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flavorkit.errors import PackagingError
from flavorkit.sdk import cached_build, content_key, tool_versions
from plugin_fixtures import install, isolated_site

#: Appends a line to the run log, prints ``lines`` lines, writes out/result.txt, exits with ``code``.
SCRIPT = """
import sys, pathlib
out, scratch, runs, lines, code, write = sys.argv[1:7]
pathlib.Path(runs).open("a").write(f"run scratch={scratch}\\n")
assert pathlib.Path(scratch).is_dir() and not any(pathlib.Path(out).iterdir())
for i in range(int(lines)):
    print(f"line {i}", flush=True)
print("to stderr", file=sys.stderr, flush=True)
if write == "1":
    (pathlib.Path(out) / "result.txt").write_text("built")
sys.exit(int(code))
"""


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FLAVORKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield from isolated_site(tmp_path / "site", monkeypatch, [])


def _build(runs: Path, *, lines: int = 3, code: int = 0, write: bool = True, tools: tuple[str, ...] = ()) -> Path:
    def command(out: Path, scratch: Path) -> list[str]:
        return [sys.executable, "-c", SCRIPT, str(out), str(scratch), str(runs), str(lines), str(code), str(int(write))]

    return cached_build(
        "demo",
        {"source": "abc", "option": 1},
        command,
        title="Building the demo",
        failure="the demo builder failed on abc",
        produced=lambda out: (out / "result.txt").is_file(),
        tools=tools,
    )


def _runs(runs: Path) -> list[str]:
    return runs.read_text().splitlines() if runs.exists() else []


def test_builds_once_then_serves_the_entry(cache: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    first = _build(runs)
    assert (first / "result.txt").read_text() == "built"
    assert sorted(p.name for p in first.iterdir()) == ["result.txt"]  # the log and scratch are not in the entry
    assert first.parent == cache / "demo" and first.name == content_key({"source": "abc", "option": 1})
    assert _build(runs) == first
    assert len(_runs(runs)) == 1
    scratch = Path(_runs(runs)[0].split("scratch=", 1)[1])
    assert scratch.parent == cache / "demo" and not scratch.exists()  # beside the entry, and removed
    assert sorted(p.name for p in (cache / "demo").iterdir()) == [
        f".{first.name}.lock",
        first.name,
        f"{first.name}.json",
    ]


def test_tool_versions_are_part_of_the_key(
    cache: Path, tmp_path: Path, site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another version of a tool (onnxruntime-genai 0.18 after 0.15) builds a separate entry and keeps the first."""
    runs = tmp_path / "runs.txt"
    install(site / "old", monkeypatch, "fk-tool", modules={}, version="0.15.2")
    first = _build(runs, tools=("fk-tool", "fk-absent-tool"))
    recipe = json.loads(first.with_name(f"{first.name}.json").read_text())
    assert recipe == {"option": 1, "source": "abc", "tools": {"fk-tool": "0.15.2", "fk-absent-tool": "missing"}}
    install(site / "new", monkeypatch, "fk-tool", modules={}, version="0.18.0")  # now first on sys.path
    assert tool_versions(["fk-tool"]) == {"fk-tool": "0.18.0"}
    second = _build(runs, tools=("fk-tool", "fk-absent-tool"))
    assert second != first and first.is_dir() and len(_runs(runs)) == 2


def test_a_failed_build_quotes_the_log_keeps_it_and_leaves_no_entry(cache: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    with pytest.raises(PackagingError) as exc:
        _build(runs, lines=40, code=3)
    key = content_key({"source": "abc", "option": 1})
    kept = cache / "demo" / f"{key}.failed.log"
    message = str(exc.value)
    assert message.startswith("the demo builder failed on abc (exit 3):\n")
    quoted = message.splitlines()[1:-1]
    assert quoted[-1] == "to stderr" and quoted[0] == "line 26" and len(quoted) == 15  # the last 15 lines
    assert message.splitlines()[-1] == f"(full log: {kept})"
    assert kept.read_text().splitlines() == [f"line {i}" for i in range(40)] + ["to stderr"]
    assert sorted(p.name for p in (cache / "demo").iterdir()) == [f".{key}.lock", kept.name]  # no entry, no scratch
    # The next successful build of the same recipe replaces the failure, and its log goes.
    assert (_build(runs) / "result.txt").is_file()
    assert not kept.exists()


def test_exit_zero_without_the_output_is_a_failure(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(PackagingError) as exc:
        _build(tmp_path / "runs.txt", write=False)
    assert str(exc.value).startswith("the demo builder failed on abc (exit 0 but it wrote no usable output):\n")
    assert not (cache / "demo" / content_key({"source": "abc", "option": 1})).exists()
