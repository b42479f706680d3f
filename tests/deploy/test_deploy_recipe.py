"""The replica recipe (deploy/): its Dockerfile and Kubernetes manifests against the real server.

The manifests are read as YAML, the container's arguments are parsed by ``flavorkit``'s own CLI
parser, and every path the probes and Prometheus use is requested from a real server on loopback,
serving and draining.

The image tests need a Docker daemon and a Python 3 base image with the interpreter's minor version
(``$FLAVORKIT_DOCKER_BASE_IMAGE``, else ``python:3.11-slim`` where it can be pulled, else the image
``deploy/debian-python-base.sh`` builds from Debian packages); they skip, saying which is missing,
without them. Every wheel comes from this machine's pip (a wheelhouse in the build context), so the
builds run with ``--network none`` and need neither PyPI nor Docker Hub from inside a container.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from flavorkit.cli import build_parser
from serve_fixtures import free_port, running

pytest.importorskip("prometheus_client")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


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


#: The default base image (deploy/Dockerfile's BASE_IMAGE), and the one deploy/debian-python-base.sh builds.
HUB_BASE = "python:3.11-slim"
LOCAL_BASE = "flavorkit-local/python:3.11-bookworm"
TEST_LABEL = "flavorkit.test=deploy-recipe"


def _docker_run(docker: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``docker ARGS`` with captured text output; never raises on a non-zero exit."""
    return subprocess.run([docker, *args], capture_output=True, text=True, timeout=timeout, check=False)


def _last_line(done: subprocess.CompletedProcess[str]) -> str:
    """The last non-empty line of stderr (or stdout): Docker's error message."""
    lines = [ln for ln in (done.stderr + "\n" + done.stdout).splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit status {done.returncode}"


@pytest.fixture(scope="session")
def docker() -> str:
    """The docker CLI, talking to a running daemon; skips the test otherwise."""
    cli = shutil.which("docker")
    if cli is None:
        pytest.skip("no docker CLI")
    info = _docker_run(cli, "info", "--format", "{{.ServerVersion}}", timeout=60)
    if info.returncode != 0:
        pytest.skip(f"no Docker daemon: {_last_line(info)}")
    return cli


@pytest.fixture(scope="session")
def python_base(docker: str) -> str:
    """A base image whose ``python3`` has this interpreter's minor version (the wheelhouse's tags)."""
    wanted = os.environ.get("FLAVORKIT_DOCKER_BASE_IMAGE")
    candidates = [wanted] if wanted else [HUB_BASE, LOCAL_BASE]
    base = next((c for c in candidates if _docker_run(docker, "image", "inspect", c).returncode == 0), None)
    if base is None and not wanted:
        pulled = _docker_run(docker, "pull", HUB_BASE, timeout=600)
        if pulled.returncode != 0:
            pytest.skip(
                f"no Python base image: pulling {HUB_BASE} failed ({_last_line(pulled)}) and {LOCAL_BASE} is "
                "absent (deploy/debian-python-base.sh builds it), or set FLAVORKIT_DOCKER_BASE_IMAGE"
            )
        base = HUB_BASE
    if base is None:
        pytest.skip(f"FLAVORKIT_DOCKER_BASE_IMAGE={wanted} is not a local image")
    version = _docker_run(
        docker, "run", "--rm", "--network", "none", base, "python3", "-c", "import sys; print(sys.version_info[:2])"
    )
    here = str(tuple(sys.version_info[:2]))
    if version.stdout.strip() != here:
        pytest.skip(
            f"{base} has Python {version.stdout.strip() or _last_line(version)}, the wheels here are for {here}"
        )
    return base


def _wheelhouse(dest: Path, *requirements: str) -> None:
    """Wheels for ``requirements`` and all their dependencies, from this machine's pip configuration."""
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", str(dest), *requirements]
    subprocess.run(cmd, check=True, timeout=900, capture_output=True)


@contextmanager
def _running_container(docker: str, image: str, *args: str) -> Iterator[str]:
    """Start ``image`` detached with ``args`` (docker run options); remove the container afterwards."""
    started = _docker_run(docker, "run", "-d", "--label", TEST_LABEL, *args, image)
    assert started.returncode == 0, started.stderr
    container = started.stdout.strip()
    try:
        yield container
    finally:
        _docker_run(docker, "rm", "-f", container)


def _wait_ready(url: str, container: str, docker: str) -> None:
    """Poll ``url`` until it answers 200; fail with the container's log if it never does."""
    deadline = time.monotonic() + 180
    while True:
        try:
            if _status(url) == 200:
                return
        except OSError:  # connection refused or reset while the server starts
            pass
        if time.monotonic() > deadline:
            log = _docker_run(docker, "logs", container)
            pytest.fail(f"{url} never answered 200; the container's log:\n{log.stdout[-2000:]}{log.stderr[-3000:]}")
        time.sleep(0.5)


def _remove_images(docker: str, *images: str) -> None:
    """Remove the test's images and the dangling install stages its builds left behind."""
    _docker_run(docker, "rmi", "-f", *images)
    _docker_run(docker, "image", "prune", "-f", "--filter", "label=flavorkit.packaging.build-stage=install")


@pytest.mark.slow
def test_the_image_builds_and_serves(
    docker: str, python_base: str, tmp_path: Path, tiny_model_dir: Path, tiny_pyfunc: Any
) -> None:
    import openai

    context = tmp_path / "context"
    shutil.copytree(tiny_model_dir, context / "model")
    root = Path(__file__).resolve().parents[2]
    _wheelhouse(context / "wheels", "-r", str(context / "model" / "requirements.txt"), f"{root}[serve]")
    tag = "flavorkit-test/recipe:latest"
    build = [
        "build", "--network", "none", "--label", TEST_LABEL, "-f", str(DEPLOY / "Dockerfile"), "-t", tag,
        "--build-arg", f"BASE_IMAGE={python_base}", "--build-arg", "INSTALL_ARGS=--no-index", str(context),
    ]  # fmt: skip
    try:
        done = _docker_run(docker, *build, timeout=1800)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        # The image holds MLflow's client side only (the model's mlflow-skinny pin), not its server side.
        script = "import importlib.metadata as md; print(*(d.metadata['Name'] for d in md.distributions()))"
        listed = _docker_run(docker, "run", "--rm", "--label", TEST_LABEL, "--entrypoint", "python", tag, "-c", script)
        installed = {re.sub(r"[-_.]+", "-", name).lower() for name in listed.stdout.split()}
        assert {"flavorkit", "mlflow-skinny", "onnxruntime-genai", "uvicorn", "prometheus-client"} <= installed
        assert not installed & {"mlflow", "sqlalchemy", "alembic", "flask", "scikit-learn", "scipy", "matplotlib"}
        port = free_port()
        with _running_container(docker, tag, "-p", f"127.0.0.1:{port}:8000", "-e", "FLAVORKIT_API_KEY=k") as container:
            base = f"http://127.0.0.1:{port}"
            _wait_ready(f"{base}/health", container, docker)
            assert _status(f"{base}/v1/models") == 401, "the key from the environment is enforced"
            with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
                assert "flavorkit_requests_total" in resp.read().decode()
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="k", max_retries=0)
            assert [m.id for m in client.models.list()] == ["smollm2-chat"]
            messages = [{"role": "user", "content": "What is the capital of Spain?"}]
            (choice,) = tiny_pyfunc.predict({"messages": messages, "max_tokens": 24})[0]["choices"]
            expected = choice["message"]["content"]
            answer = client.chat.completions.create(model="smollm2-chat", messages=messages, max_tokens=24)
            assert answer.choices[0].message.content == expected, "greedy: the same answer as in-process predict"
            stream = client.chat.completions.create(model="smollm2-chat", messages=messages, max_tokens=24, stream=True)
            chunks = [c for c in stream if c.choices]
            assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
            assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == [
                choice["finish_reason"]
            ]
            # docker stop sends SIGTERM to PID 1 (flavorkit itself, exec form): the server shuts down
            # through its lifespan (the drain) and exits 0 well before Docker would send SIGKILL.
            # (The tiny model answers in milliseconds, so no request is still running by then; the
            # drain itself: the probe test above, and tests/serve/test_serve_cancel.py.)
            started = time.monotonic()
            assert _docker_run(docker, "stop", "-t", "30", container, timeout=60).returncode == 0
            stopped_after = time.monotonic() - started
            log = _docker_run(docker, "logs", container).stderr
            assert _docker_run(docker, "inspect", "-f", "{{.State.ExitCode}}", container).stdout.strip() == "0", log
            assert stopped_after < 25, "SIGTERM was handled, not waited out"
            assert "Application shutdown complete" in log and "Finished server process" in log
    finally:
        _remove_images(docker, tag)


#: The seeded base for `mlflow models build-docker`: pip installs from a wheelhouse inside the image, so
#: MLflow's own Dockerfile steps (`pip install mlflow==...`, the model's requirements) run offline.
MLFLOW_BASE_DOCKERFILE = """\
FROM {base}
LABEL flavorkit.packaging.build-stage=install
COPY wheels/ /wheels/
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels
"""


@pytest.mark.slow
def test_mlflow_build_docker_serves_invocations_with_the_in_process_answer(
    docker: str, python_base: str, tmp_path: Path, tiny_model_dir: Path, tiny_pyfunc: Any
) -> None:
    import mlflow
    import mlflow.models

    env = yaml.safe_load((tiny_model_dir / "python_env.yaml").read_text())
    seeded = tmp_path / "mlflow-base"
    requirements = ["-r", str(tiny_model_dir / "requirements.txt"), *env["build_dependencies"]]
    _wheelhouse(seeded / "wheels", f"mlflow=={mlflow.__version__}", "gunicorn[gevent]", *requirements)
    (seeded / "Dockerfile").write_text(MLFLOW_BASE_DOCKERFILE.format(base=python_base))
    base_tag, tag = "flavorkit-test/mlflow-base:latest", "flavorkit-test/mlflow-pyfunc:latest"
    try:
        done = _docker_run(docker, "build", "--network", "none", "-t", base_tag, str(seeded), timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        # What `mlflow models build-docker -m MODEL -n NAME --env-manager local` runs, with a base image
        # (the CLI always takes python:<model's Python>-slim from Docker Hub).
        mlflow.models.build_docker(str(tiny_model_dir), tag, env_manager="local", base_image=base_tag)
        port = free_port()
        # The seeded base has no nginx (MLflow's front proxy on 8080): serve uvicorn itself on 8000.
        options = ["-e", "DISABLE_NGINX=true", "-e", "UVICORN_HOST=0.0.0.0", "-e", "MLFLOW_MODELS_WORKERS=1"]
        with _running_container(docker, tag, "-p", f"127.0.0.1:{port}:8000", *options) as container:
            _wait_ready(f"http://127.0.0.1:{port}/ping", container, docker)
            request = {"messages": [{"role": "user", "content": "What is the capital of Spain?"}], "max_tokens": 24}
            post = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations",
                data=json.dumps(request).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(post, timeout=60) as resp:
                (scored,) = json.loads(resp.read())
            (expected,) = tiny_pyfunc.predict(request)
            assert scored["choices"] == expected["choices"] and scored["usage"] == expected["usage"]
            assert _status(f"http://127.0.0.1:{port}/v1/models") == 404, "MLflow's server has no OpenAI routes"
    finally:
        _remove_images(docker, tag, base_tag)
