"""The replica recipe (deploy/): its Dockerfile and Kubernetes manifests against the real server.

The manifests are read as YAML, the container's arguments are parsed by ``flavorkit``'s own CLI
parser, and every path the probes and Prometheus use is requested from a real server on loopback,
serving and draining. Building the image needs a Docker daemon; that test skips without one.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from flavorkit.cli import build_parser
from serve_fixtures import free_port, running

pytest.importorskip("prometheus_client")

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _manifests() -> dict[str, dict[str, Any]]:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "flavorkit-serve.yaml").read_text()))
    return {d["kind"]: d for d in docs}


def _container() -> dict[str, Any]:
    (container,) = _manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def _dockerfile_cmd() -> list[str]:
    (line,) = [ln for ln in (DEPLOY / "Dockerfile").read_text().splitlines() if ln.startswith("CMD ")]
    return list(json.loads(line[len("CMD ") :]))


def test_the_container_runs_flavorkit_serve_with_valid_flags() -> None:
    container = _container()
    assert container["command"] == ["flavorkit"]
    args = build_parser().parse_args(container["args"])
    assert args.func.__name__ == "cmd_serve" and args.model_uri == "/model"
    assert args.host == "0.0.0.0"
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": args.port}
    pod = _manifests()["Deployment"]["spec"]["template"]
    assert pod["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(args.port),
        "prometheus.io/path": "/metrics",
    }
    assert pod["spec"]["terminationGracePeriodSeconds"] > args.drain_timeout, "SIGKILL must come after the drain"
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/version", "port": "http"}
    (env,) = container["env"]
    assert env["name"] == "FLAVORKIT_API_KEY" and "secretKeyRef" in env["valueFrom"]
    service = _manifests()["Service"]
    assert service["spec"]["selector"] == pod["metadata"]["labels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_the_dockerfile_serves_on_its_exposed_port_within_the_default_grace_period() -> None:
    cmd = _dockerfile_cmd()
    assert cmd[0] == "flavorkit"
    args = build_parser().parse_args(cmd[1:])
    assert args.func.__name__ == "cmd_serve" and args.model_uri == "/model" and args.host == "0.0.0.0"
    exposed = re.search(r"^EXPOSE (\d+)$", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    assert exposed is not None and int(exposed.group(1)) == args.port
    assert args.drain_timeout < 30, "Kubernetes' default grace period is 30 s"
    assert args.served_model_name == _container()["args"][_container()["args"].index("--served-model-name") + 1]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_probe_and_metrics_paths_answer_without_the_key_serving_and_draining(tiny_model_dir: Path) -> None:
    from flavorkit.serve import create_app

    container = _container()
    ready = container["readinessProbe"]["httpGet"]["path"]
    live = container["livenessProbe"]["httpGet"]["path"]
    metrics = _manifests()["Deployment"]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]
    app = create_app(str(tiny_model_dir), api_key="secret")
    with running(app) as base:
        assert _status(f"{base}/v1/models") == 401, "the API itself needs the key"
        assert (_status(base + ready), _status(base + live), _status(base + metrics)) == (200, 200, 200)
        with urllib.request.urlopen(base + metrics, timeout=10) as resp:
            assert "flavorkit_requests_total" in resp.read().decode()
        app.server.scheduler.stop_accepting()  # what SIGTERM starts
        assert _status(base + ready) == 503, "a draining replica leaves the Service's endpoints"
        assert _status(base + live) == 200, "but is not killed while it drains"


def test_the_image_builds_and_serves(tmp_path: Path, tiny_model_dir: Path) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI")
    info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=60, check=False)
    if info.returncode != 0:
        reason = info.stderr.strip().splitlines()[-1] if info.stderr.strip() else "docker info failed"
        pytest.skip(f"no Docker daemon: {reason}")
    context = tmp_path / "context"
    shutil.copytree(tiny_model_dir, context / "model")
    root = Path(__file__).resolve().parents[1]
    wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(context / "wheels"), str(root)]
    subprocess.run(wheel, check=True, timeout=600)
    tag = "flavorkit-recipe-test"
    build = [docker, "build", "-f", str(DEPLOY / "Dockerfile"), "-t", tag, str(context)]
    done = subprocess.run(build, capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    port = free_port()
    run = [docker, "run", "-d", "--rm", "-p", f"127.0.0.1:{port}:8000", "-e", "FLAVORKIT_API_KEY=k", tag]
    container = subprocess.run(run, capture_output=True, text=True, timeout=120, check=True).stdout.strip()
    try:
        deadline = time.monotonic() + 180
        while _status(f"http://127.0.0.1:{port}/health") != 200:
            assert time.monotonic() < deadline, "the container did not become ready"
            time.sleep(1)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer k"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.loads(resp.read())["data"][0]["id"] == "smollm2-chat"
    finally:
        subprocess.run([docker, "stop", "-t", "30", container], capture_output=True, timeout=120, check=False)
