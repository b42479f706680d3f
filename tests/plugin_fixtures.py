"""Install throwaway plugin distributions on sys.path, so entry-point discovery sees them for real.

A distribution is a ``*.dist-info`` folder with METADATA and entry_points.txt next to the plugin's
modules; ``importlib.metadata`` finds it once the folder is on ``sys.path``. Nothing is mocked.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from flavorkit.backend.registry import get_registry


def make_distribution(
    root: Path,
    name: str,
    modules: Mapping[str, str],
    backends: Mapping[str, str] | None = None,
    middleware: Mapping[str, str] | None = None,
    version: str = "0.1.0",
) -> Path:
    """Write modules and a dist-info declaring the given entry points under ``root``; return root."""
    root.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    if backends:
        lines.append("[flavorkit.backends]")
        lines += [f"{k} = {v}" for k, v in backends.items()]
    if middleware:
        lines.append("[flavorkit.middleware]")
        lines += [f"{k} = {v}" for k, v in middleware.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


def install(root: Path, monkeypatch: pytest.MonkeyPatch, name: str, **kwargs: Any) -> Path:
    """Write a distribution named ``name`` under ``root`` and put it on ``sys.path`` for this test."""
    path = make_distribution(root / name, name, **kwargs)
    monkeypatch.syspath_prepend(str(path))
    return path


def isolated_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, modules: Sequence[str]) -> Iterator[Path]:
    """A folder for throwaway distributions; afterwards their modules are forgotten and the registry re-read."""
    monkeypatch.delenv("FLAVORKIT_STRICT_PLUGINS", raising=False)
    yield tmp_path
    for mod in modules:
        sys.modules.pop(mod, None)
    monkeypatch.undo()
    get_registry(refresh=True)


#: A minimal, correct, pure-Python backend: the "model" echoes the last user message, one
#: character per token, and ends with EOS. Real enough to exercise the whole core.
ECHO_BACKEND = r"""
from flavorkit import Artifacts, Capability, Delta, RuntimeInfo, hookimpl
from pathlib import Path

class EchoBackend:
    @hookimpl
    def dependencies(self):
        return []

    @hookimpl
    def capabilities(self):
        return [Capability.STREAMING, Capability.BATCHING]

    @hookimpl
    def artifacts(self, source, options, workdir):
        out = Path(workdir) / "echo"
        out.mkdir()
        (out / "config.txt").write_text(str(source))
        return Artifacts(files={"echo": str(out)}, requirements=[])

    @hookimpl
    def load(self, artifacts, options):
        return {"dir": artifacts["echo"]}

    @hookimpl
    def describe(self, handle):
        return RuntimeInfo(context_length=512, model_name="echo")

    @hookimpl
    def encode(self, handle, messages):
        text = "".join(f"\x01{m['role']}\x02{m['content']}" for m in messages)
        return [ord(c) for c in text]

    @hookimpl
    def generate(self, handle, requests):
        streams = []
        for req in requests:
            text = "".join(chr(i) for i in req.prompt_ids).split("\x02")[-1]
            streams.append(iter(text))
        produced = [0] * len(requests)
        live = set(range(len(requests)))
        while live:
            for i in sorted(live):
                if requests[i].cancelled:
                    live.discard(i)
                    continue
                ch = next(streams[i], None)
                produced[i] += 1
                if ch is None:
                    live.discard(i)
                    yield Delta(i, "", 1, "stop")
                elif produced[i] >= requests[i].max_tokens:
                    live.discard(i)
                    yield Delta(i, ch, 1, "length")
                else:
                    yield Delta(i, ch, 1)

backend = EchoBackend()
"""

#: A middleware plugin that records the batch size of every generate() call it wraps.
COUNTING_MIDDLEWARE = """
from flavorkit import hookimpl

calls = []

class Counter:
    @hookimpl(wrapper=True)
    def generate(self, handle, requests):
        calls.append(len(requests))
        return (yield)

middleware = Counter()
"""
