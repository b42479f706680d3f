"""Build a Hugging Face Hub cache on disk exactly as huggingface_hub lays it out, without the network.

huggingface_hub stores each file once under ``models--<org>--<name>/blobs/<etag>`` and points
``snapshots/<commit>/<path>`` at it with a *relative* symbolic link
(``file_download._create_symlink``: ``os.path.relpath(blob, dirname(pointer))``), and records the
commit a branch points to in ``refs/<branch>``. Tests that copied real files into the snapshot
missed every bug that comes from those links.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["COMMIT", "closed_endpoint", "hub_cache", "hub_env"]

#: A 40-hex commit id, as the Hub uses.
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            yield path


def hub_cache(cache: Path, repo_id: str, model: Path, subfolder: str | None = None, *, revision: str = "main") -> Path:
    """Add ``model``'s files to the Hub cache ``cache`` as repo ``repo_id`` (under ``subfolder``).

    Every file becomes a blob named by its sha256 (the etag the Hub gives LFS files) and a relative
    symbolic link from the snapshot. Returns the snapshot folder.
    """
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    blobs = repo / "blobs"
    snapshot = repo / "snapshots" / COMMIT
    blobs.mkdir(parents=True, exist_ok=True)
    for path in _files(model):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        blob = blobs / digest
        if not blob.exists():
            shutil.copyfile(path, blob)
        rel = path.relative_to(model)
        pointer = snapshot / subfolder / rel if subfolder else snapshot / rel
        pointer.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(COMMIT)
    return snapshot


def closed_endpoint() -> str:
    """An http URL on loopback where nothing listens (connections are refused at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextmanager
def hub_env(cache: Path, *, online: bool) -> Iterator[None]:
    """Point huggingface_hub at ``cache``; offline (``HF_HUB_OFFLINE``) or online with the Hub unreachable.

    huggingface_hub reads its environment once at import, so the in-process equivalent of the
    variables is its ``constants`` module (the sessions it caches per thread are reset around the
    change). ``tests/packaging/test_sources.py`` checks the same two modes through real environment variables.
    """
    from huggingface_hub import constants

    try:
        from huggingface_hub.utils import reset_sessions  # huggingface_hub 0.x (requests sessions)
    except ImportError:  # 1.0 and later (transformers 5): one shared httpx client
        from huggingface_hub.utils import close_session as reset_sessions

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_CACHE", str(cache))
        patch.setattr(constants, "HF_HUB_OFFLINE", not online)
        patch.setattr(constants, "ENDPOINT", closed_endpoint())
        reset_sessions()
        try:
            yield
        finally:
            reset_sessions()
