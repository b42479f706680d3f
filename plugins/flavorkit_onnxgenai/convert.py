"""Convert a transformers checkpoint to an ORT-genai folder with onnxruntime-genai's model builder.

Runs ``python -m onnxruntime_genai.models.builder`` in a subprocess (it imports torch and
transformers and peaks at a few GB, none of which should stay in the caller's process). The output
is cached under ``~/.cache/flavorkit/onnx-genai/<key>``, keyed by the checkpoint's content, the
builder version and the options, so a second packaging of the same checkpoint skips the build.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from flavorkit.sdk import (
    BackendUnavailable,
    ModelDir,
    PackagingError,
    build_scratch,
    cached_dir,
    check_links,
    content_key,
    installed_version,
    model_dir,
    step,
    tree_digest,
)

__all__ = ["RECIPE_VERSION", "convert_checkpoint"]

#: Bump when the conversion command changes in a way that changes its output.
RECIPE_VERSION = 1
_BUILDER_NEEDS = ("transformers", "torch", "onnx")


def convert_checkpoint(
    checkpoint: str | Path | ModelDir,
    *,
    precision: str = "int4",
    execution_provider: str = "cpu",
    builder_options: Mapping[str, str] | None = None,
) -> Path:
    """Return a cached ORT-genai folder built from the transformers ``checkpoint`` directory.

    The checkpoint's links are checked first (:func:`flavorkit.sources.check_links`): the builder
    reads the folder in place and must never read a file from outside it. A :class:`ModelDir`
    (from :func:`flavorkit.sources.resolve_model_dir`) says where its links may lead; a plain
    path allows links inside itself (and into the Hub cache blobs of a snapshot).
    """
    missing = [d for d in _BUILDER_NEEDS if installed_version(d) is None]
    if missing:
        raise BackendUnavailable(
            "onnx",
            f"converting a transformers checkpoint needs {', '.join(missing)}",
            "pip install 'onnxruntime-genai>=0.15,<0.19' 'transformers>=4.45,<4.58' torch onnx onnx-ir onnxscript",
        )
    found = checkpoint if isinstance(checkpoint, ModelDir) else model_dir(checkpoint)
    check_links(found)
    source = found.path
    options = dict(builder_options or {})
    recipe = {
        "recipe": RECIPE_VERSION,
        "source": tree_digest(source),
        "builder": installed_version("onnxruntime-genai") or "unknown",
        "precision": precision,
        "execution_provider": execution_provider,
        "extra_options": options,
    }

    def build(out: Path) -> None:
        cmd = [
            sys.executable,
            "-m",
            "onnxruntime_genai.models.builder",
            "-i",
            str(source),
            "-o",
            str(out),
            "-p",
            precision,
            "-e",
            execution_provider,
        ]
        with build_scratch(out) as scratch:
            cmd += ["-c", str(scratch)]
            if options:
                cmd += ["--extra_options", *(f"{k}={v}" for k, v in sorted(options.items()))]
            log = Path(scratch) / "builder.log"
            with (
                step(f"Converting {source.name} to ORT-genai {precision} ({execution_provider})"),
                open(log, "w") as fh,
            ):
                proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False)
            if proc.returncode != 0 or not (out / "genai_config.json").is_file():
                tail = log.read_text(errors="replace").replace("\r", "\n").strip().splitlines()[-15:]
                raise PackagingError(
                    f"onnxruntime-genai model builder failed (exit {proc.returncode}) on {source}:\n" + "\n".join(tail)
                )

    return cached_dir("onnx-genai", content_key(recipe), build, recipe=recipe)
