"""A real ``mlflow server`` on loopback, shared by the tests that need a team's tracking server."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from serve_fixtures import free_port, server_process


@contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 with a sqlite backend store and artifacts proxied to ``root``; yield its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        (root / "artifacts").as_uri(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with server_process(cmd, f"{url}/health"):
        yield url
