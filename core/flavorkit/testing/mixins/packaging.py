"""Packaging: artifacts, pinned requirements, signatures, loading with MLflow, tamper detection.

Internal: not part of the plugin SDK; a backend's tests subclass :class:`~flavorkit.testing.BackendConformance`.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flavorkit.signatures import CHAT, TEXT
from flavorkit.testing.clauses import clause
from flavorkit.testing.harness import ClauseFailed, Harness, check
from flavorkit.testing.mixins.base import _USAGE_KEYS, ConformanceBase

__all__ = ["PackagingClauses"]


class PackagingClauses(ConformanceBase):
    """Packaging: artifacts, pinned requirements, signatures, loading with MLflow, tamper detection."""

    @clause("artifacts_manifest")
    def test_artifacts_manifest(self, conformance: Harness) -> None:
        """artifacts() names existing files; the packaged copies match the manifest."""
        from flavorkit.model.loading import MANIFEST_ARTIFACT
        from flavorkit.model.manifest import verify_model

        arts = conformance.raw_artifacts()
        for key, location in arts.files.items():
            check(
                key.isidentifier() and key != MANIFEST_ARTIFACT,
                f"artifacts() returned the invalid artifact name {key!r} (use a Python identifier)",
            )
            check(Path(location).exists(), f"artifacts() returned artifact {key!r} at {location}, which does not exist")
        check(
            all(isinstance(r, str) for r in arts.requirements),
            f"artifacts().requirements must be strings, got {arts.requirements!r}",
        )
        try:
            json.dumps(arts.metadata)
        except TypeError as exc:
            raise ClauseFailed(f"artifacts().metadata must be JSON-serialisable: {exc}") from None
        packaged = conformance.packaged_artifacts()
        check(
            set(packaged) == set(arts.files),
            f"packaged artifacts {sorted(packaged)} differ from the names artifacts() returned {sorted(arts.files)}",
        )
        model_dir = conformance.packaged()
        manifest = verify_model(model_dir)
        empty = []
        for name, location in sorted(packaged.items()):
            rel = Path(location).relative_to(model_dir).as_posix()
            if not any(f == rel or f.startswith(f"{rel}/") for f in manifest.files):
                empty.append(name)
        check(not empty, f"artifact(s) {', '.join(empty)} hold no files, so the manifest cannot protect them")

    @clause("requirements_pinned")
    def test_requirements_pinned(self, conformance: Harness) -> None:
        """The backend's and the packaged model's requirements are exact pins of what is installed."""
        import importlib
        import importlib.metadata as md

        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name
        from packaging.version import Version

        def pin(text: str, where: str) -> tuple[str, str]:
            req = Requirement(text)
            specs = list(req.specifier)
            check(
                len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version,
                f"{where} requirement {text!r} is not pinned to one exact version (use name==version)",
            )
            return req.name, specs[0].version

        for text in conformance.raw_artifacts().requirements:
            pin(text, "artifacts()")
        lines = (conformance.packaged() / "requirements.txt").read_text(encoding="utf-8").splitlines()
        reqs = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith(("#", "-"))]
        pinned: dict[str, str] = {}
        modules = md.packages_distributions()
        for text in reqs:
            name, version = pin(text, "packaged")
            pinned[canonicalize_name(name)] = version
            try:
                installed = md.version(name)
            except md.PackageNotFoundError:
                raise ClauseFailed(f"packaged requirement {text!r} is not installed here") from None
            check(
                Version(installed).public == Version(version).public,
                f"packaged requirement {text!r} but {name} {installed} is installed",
            )
            tops = sorted(m for m, dists in modules.items() if canonicalize_name(name) in map(canonicalize_name, dists))
            tops = [m for m in tops if not m.startswith("_")] or tops
            if tops:
                preferred = sorted(tops, key=lambda m: (canonicalize_name(m) != canonicalize_name(name), m))[0]
                try:
                    importlib.import_module(preferred)
                except Exception as exc:
                    raise ClauseFailed(
                        f"packaged requirement {text!r}: module {preferred!r} does not import: {exc}"
                    ) from None
        for dep in conformance.backend().dependencies():
            req = Requirement(dep)
            if req.marker is not None and not req.marker.evaluate():
                continue
            key = canonicalize_name(req.name)
            check(
                key in pinned,
                f"the backend depends on {dep!r} but the packaged requirements {reqs} do not include {req.name}",
            )
            check(
                req.specifier.contains(pinned[key], prereleases=True),
                f"the packaged pin {req.name}=={pinned[key]} is outside the backend's declared range {dep!r}",
            )

    @clause("signature")
    def test_signature(self, conformance: Harness) -> None:
        """Each task's signature is a ModelSignature, is what gets packaged, and accepts its input example."""
        import mlflow
        from mlflow.models import Model, ModelSignature

        from flavorkit.signatures import input_example

        needs = {CHAT: "messages", TEXT: "prompt"}
        for task in type(self).tasks:
            sig = conformance.backend().signature(task, conformance.options())
            check(isinstance(sig, ModelSignature), f"signature({task!r}) must return an mlflow ModelSignature")
            names = set(sig.inputs.input_names()) if sig.inputs is not None else set()
            if task in needs:
                check(
                    needs[task] in names, f"signature({task!r}) inputs {sorted(names)} lack the {needs[task]!r} column"
                )
            check(sig.outputs is not None, f"signature({task!r}) declares no outputs")
            path = conformance.packaged(task)
            saved = Model.load(str(path)).signature
            check(
                saved is not None and saved.to_dict() == sig.to_dict(),
                f"the model packaged for {task!r} does not carry the signature the backend returns",
            )
            if task not in needs:
                continue
            model = conformance.pyfunc() if task == CHAT else mlflow.pyfunc.load_model(str(path))
            out = model.predict(input_example(task))
            if task == CHAT:
                check(
                    isinstance(out, list) and len(out) == 1 and out[0].get("object") == "chat.completion",
                    f"predict(input example) for {task!r} returned {out!r:.200}",
                )
            else:
                check(
                    isinstance(out, list) and len(out) == 1 and isinstance(out[0], str),
                    f"predict(input example) for {task!r} must return one string, got {out!r:.200}",
                )

    @clause("package_load_predict")
    def test_package_load_predict(self, conformance: Harness) -> None:
        """The packaged model loads with mlflow.pyfunc and answers with a well-formed chat completion."""
        from mlflow.models import Model

        from flavorkit.model.loading import MANIFEST_ARTIFACT
        from flavorkit.signatures import input_example

        meta = Model.load(str(conformance.packaged())).metadata or {}
        check(
            meta.get("flavorkit", {}).get("backend") == conformance.backend_name,
            f"the packaged model's metadata names backend {meta.get('flavorkit', {}).get('backend')!r}",
        )
        resp = conformance.predict(input_example(CHAT))
        problems = _chat_completion_problems(resp)
        check(not problems, f"predict returned a malformed chat completion: {_first(problems)}")
        info = conformance.info()
        check(
            isinstance(info.context_length, int) and info.context_length > 0,
            f"describe() gives context_length {info.context_length!r}; it must be a positive integer",
        )
        check(isinstance(info.model_name, str) and info.model_name, "describe() gives an empty model_name")
        backend = conformance.backend()
        files = {k: v for k, v in conformance.packaged_artifacts().items() if k != MANIFEST_ARTIFACT}
        second = backend.load(files, conformance.options())
        backend.unload(second)

    @clause("tamper_detected")
    def test_tamper_detected(self, conformance: Harness) -> None:
        """Changing or adding an artifact file, or editing the shipped plugin code, fails the load naming it."""
        import mlflow

        from flavorkit.errors import IntegrityError
        from flavorkit.model.manifest import read_manifest

        source = conformance.packaged()
        arts = {n: Path(p).relative_to(source).as_posix() for n, p in conformance.packaged_artifacts().items()}
        entries = read_manifest(source).files
        in_artifacts = [(e.size, rel) for rel, e in entries.items() if rel.startswith("artifacts/")]
        check(in_artifacts, "the manifest lists no artifact files")
        rel = next((r for size, r in sorted(in_artifacts) if size > 0), min(in_artifacts)[1])

        changed = conformance.workdir / "tampered-changed"
        shutil.copytree(source, changed)
        data = bytearray((changed / rel).read_bytes())
        if data:
            data[-1] ^= 0xFF
        else:
            data = bytearray(b"\x00")
        (changed / rel).write_bytes(bytes(data))
        cases: list[tuple[Path, str]] = [(changed, rel)]
        dir_art = next((p for p in arts.values() if (source / p).is_dir()), None)
        if dir_art is not None:
            added = conformance.workdir / "tampered-added"
            shutil.copytree(source, added)
            (added / dir_art / "flavorkit-kit-extra.bin").write_bytes(b"not in the manifest")
            cases.append((added, f"{dir_art}/flavorkit-kit-extra.bin"))
        plugin_top = conformance.backend().object_path.partition(":")[0].split(".")[0]
        plugin_code = sorted(r for r in entries if r.startswith(f"code/{plugin_top}") and r.endswith(".py"))
        if plugin_top != "flavorkit" and plugin_code:
            edited = conformance.workdir / "tampered-code"
            shutil.copytree(source, edited)
            with open(edited / plugin_code[0], "a", encoding="utf-8") as fh:
                fh.write("\n# edited after packaging\n")
            cases.append((edited, plugin_code[0]))
        for model_dir, named in cases:
            try:
                mlflow.pyfunc.load_model(str(model_dir))
            except IntegrityError as exc:
                check(named in str(exc), f"the IntegrityError does not name the tampered file {named!r}: {exc}")
            except Exception as exc:
                raise ClauseFailed(
                    f"tampering with {named!r} raised {type(exc).__name__}: {exc}, expected IntegrityError"
                ) from None
            else:
                raise ClauseFailed(f"the model loaded although {named!r} was tampered with")


def _first(rows: Sequence[str]) -> str:
    return rows[0] if len(rows) == 1 else "; ".join(rows)


def _chat_completion_problems(resp: Mapping[str, Any]) -> list[str]:
    problems = []
    for key, kind in (("id", str), ("object", str), ("created", int), ("model", str), ("choices", list)):
        if not isinstance(resp.get(key), kind):
            problems.append(f"{key!r} must be a {kind.__name__}, got {resp.get(key)!r}")
    if resp.get("object") != "chat.completion":
        problems.append(f"'object' is {resp.get('object')!r}, expected 'chat.completion'")
    for i, choice in enumerate(resp.get("choices") or []):
        message = choice.get("message", {})
        if choice.get("index") != i:
            problems.append(f"choices[{i}].index is {choice.get('index')!r}")
        if message.get("role") != "assistant" or not isinstance(message.get("content"), str):
            problems.append(f"choices[{i}].message must be an assistant message with string content, got {message!r}")
        if choice.get("finish_reason") not in ("stop", "length"):
            problems.append(f"choices[{i}].finish_reason is {choice.get('finish_reason')!r}")
    usage = resp.get("usage") or {}
    if not all(isinstance(usage.get(k), int) and not math.isnan(usage[k]) for k in _USAGE_KEYS):
        problems.append(f"'usage' must hold integer {', '.join(_USAGE_KEYS)}, got {usage!r}")
    return problems
