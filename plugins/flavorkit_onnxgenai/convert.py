"""Convert a transformers checkpoint to an ORT-genai folder with onnxruntime-genai's model builder.

Runs ``python -m onnxruntime_genai.models.builder`` in a subprocess (it imports torch and
transformers and peaks at a few GB, none of which should stay in the caller's process). The output
is cached under ``~/.cache/flavorkit/onnx-genai/<key>``, keyed by the checkpoint's content, the
options and the installed versions of the builder and what it runs on (so the 0.18 builder's
output never stands in for the 0.15 builder's), and a second packaging of the checkpoint skips it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from packaging.version import Version

from flavorkit.sdk import (
    BackendUnavailable,
    ModelDir,
    PackagingError,
    cached_build,
    check_links,
    extra_requirements,
    installed_version,
    model_dir,
    tree_digest,
)

__all__ = ["RECIPE_VERSION", "builder_problem", "convert_checkpoint", "unproduced_outputs"]

#: Bump when the conversion command changes in a way that changes its output.
RECIPE_VERSION = 2
#: The model builder ships in each of these (one is installed); what they run also depends on the
#: others' versions. All of them key the cache, so the 0.18 builder's output (with transformers 5)
#: never replaces or reuses the 0.15 builder's (with transformers 4.57).
_TOOLS = (
    "onnxruntime-genai",
    "onnxruntime-genai-cuda",
    "onnxruntime-genai-directml",
    "transformers",
    "torch",
    "onnx",
    "onnx-ir",
    "onnxscript",
)
_BUILDER_NEEDS = ("transformers", "torch", "onnx")
#: From 0.16 on, the model builder imports model classes that only transformers 5 has.
_BUILDER_NEEDS_TRANSFORMERS_5 = Version("0.16")


def _builder_version() -> Version | None:
    """The installed onnxruntime-genai build's version (any execution provider's), or None."""
    for dist in _TOOLS[:3]:
        text = installed_version(dist)
        if text is not None:
            return Version(text)
    return None


def builder_problem() -> tuple[str, str] | None:
    """Why the installed model builder cannot run here, and the pip command that fixes it; None when it can.

    Checks the ``flavorkit[onnx-convert]`` requirements, then the pairing the ranges cannot
    express: the 0.16+ builder imports transformers 5 classes, so it needs transformers 5.
    """
    missing = [d for d in _BUILDER_NEEDS if installed_version(d) is None]
    builder = _builder_version()
    if builder is None:
        missing.insert(0, "onnxruntime-genai")
    if missing:
        hint = "pip install " + " ".join(f"'{r}'" for r in extra_requirements("onnx-convert", fallback=missing))
        return f"converting a transformers checkpoint needs {', '.join(missing)}", hint
    transformers = Version(installed_version("transformers") or "0")
    if builder is not None and builder >= _BUILDER_NEEDS_TRANSFORMERS_5 and transformers.major < 5:
        return (
            f"the model builder of onnxruntime-genai {builder} needs transformers 5 (installed: {transformers})",
            f"pip install 'transformers>=5'  (or, to stay on transformers {transformers.major}: "
            "pip install 'onnxruntime-genai==0.15.2')",
        )
    return None


def unproduced_outputs(folder: Path) -> list[str]:
    """The decoder graph's declared outputs that no node, input or initializer produces (empty when sound).

    ONNX Runtime refuses such a graph at load time ("Graph output ... does not exist in the
    graph"). The builders of onnxruntime-genai 0.15.2 and 0.18.0 write one for ``fp32`` on
    ``cuda`` (the ``present.*`` outputs of its Attention nodes are not wired), which was found by
    running the GPU tests on an H100; checking the graph here turns that into a packaging error
    instead of a model that cannot load. Reads only the graph, not the weights.
    """
    import json

    import onnx

    decoder = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))["model"]["decoder"]
    graph = onnx.load(str(folder / decoder.get("filename", "model.onnx")), load_external_data=False).graph
    produced = {name for node in graph.node for name in node.output}
    produced |= {i.name for i in graph.input} | {i.name for i in graph.initializer}
    return [o.name for o in graph.output if o.name not in produced]


def convert_checkpoint(
    checkpoint: str | Path | ModelDir,
    *,
    precision: str = "int4",
    execution_provider: str = "cpu",
    builder_options: Mapping[str, str] | None = None,
) -> Path:
    """Return a cached ORT-genai folder built from the transformers ``checkpoint`` directory.

    The checkpoint's links are checked first (:func:`flavorkit.sdk.check_links`): the builder
    reads the folder in place and must never read a file from outside it. A :class:`ModelDir`
    (from :func:`flavorkit.sdk.resolve_model_dir`) says where its links may lead; a plain
    path allows links inside itself (and into the Hub cache blobs of a snapshot). Whichever model
    builder is installed runs (0.15 with transformers 4, 0.16 to 0.18 with transformers 5); an
    unusable pairing raises :class:`BackendUnavailable` with the fix.
    """
    problem = builder_problem()
    if problem is not None:
        raise BackendUnavailable("onnx", *problem)
    found = checkpoint if isinstance(checkpoint, ModelDir) else model_dir(checkpoint)
    check_links(found)
    source = found.path
    options = dict(builder_options or {})
    recipe = {
        "recipe": RECIPE_VERSION,
        "source": tree_digest(source),
        "precision": precision,
        "execution_provider": execution_provider,
        "extra_options": options,
    }

    def command(out: Path, scratch: Path) -> list[str]:
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source), "-o", str(out)]
        cmd += ["-p", precision, "-e", execution_provider, "-c", str(scratch)]
        if options:
            cmd += ["--extra_options", *(f"{k}={v}" for k, v in sorted(options.items()))]
        return cmd

    def refuse_unloadable(out: Path) -> None:
        missing = unproduced_outputs(out)
        if missing:
            shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
            raise PackagingError(
                f"onnxruntime-genai {_builder_version()}'s model builder wrote an invalid model for "
                f"precision {precision!r} on {execution_provider!r}: its graph declares outputs that no node "
                f"produces ({shown}), so ONNX Runtime would refuse to load it. Choose another precision "
                "(on cuda: 'fp16' or 'int4')."
            )

    def usable(out: Path) -> bool:
        if not (out / "genai_config.json").is_file():
            return False
        refuse_unloadable(out)  # a bad build is never cached
        return True

    folder = cached_build(
        "onnx-genai",
        recipe,
        command,
        title=f"Converting {source.name} to ORT-genai {precision} ({execution_provider})",
        failure=f"onnxruntime-genai model builder failed on {source}",
        produced=usable,
        tools=_TOOLS,
    )
    refuse_unloadable(folder)  # a cache entry written before this check existed (it reads the graph only)
    return folder
