"""Export a transformers checkpoint to ONNX with Optimum, cached by content.

The export runs ``python -m flavorkit_hf.export`` in a subprocess (it imports torch and traces the
model, peaking at several times the model's size, none of which should stay in the caller's
process). Output goes to ``<flavorkit cache>/optimum-onnx/<key>``, keyed by the checkpoint's
content, the exporter versions and the options, so packaging the same checkpoint again skips it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from flavorkit.sdk import (
    ModelDir,
    cached_build,
    check_links,
    model_dir,
    tree_digest,
)

__all__ = ["RECIPE_VERSION", "TASK", "export_checkpoint", "main"]

#: Bump when the export command changes in a way that changes its output.
RECIPE_VERSION = 1
#: Decoder with past key values: what ORTModelForCausalLM needs for incremental decoding.
TASK = "text-generation-with-past"
#: The distributions whose versions key the cache (a new version exports into a new entry).
_TOOLS = ("optimum-onnx", "optimum", "transformers", "torch", "onnx")


def export_checkpoint(checkpoint: str | Path | ModelDir, *, trust_remote_code: bool = False) -> Path:
    """Return a cached fp32 ONNX export (with past key values) of the transformers ``checkpoint`` folder.

    The checkpoint's links are checked first (:func:`flavorkit.sdk.check_links`), so the
    exporter never reads a file from outside it.
    """
    found = checkpoint if isinstance(checkpoint, ModelDir) else model_dir(checkpoint)
    check_links(found)
    source = found.path
    recipe = {
        "recipe": RECIPE_VERSION,
        "source": tree_digest(source),
        "task": TASK,
        "dtype": "fp32",
        "trust_remote_code": trust_remote_code,
    }

    def command(out: Path, scratch: Path) -> list[str]:
        cmd = [sys.executable, "-m", "flavorkit_hf.export", str(source), str(out)]
        return [*cmd, "--trust-remote-code"] if trust_remote_code else cmd

    env = dict(os.environ)
    plugins = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (plugins, env.get("PYTHONPATH")) if p)
    return cached_build(
        "optimum-onnx",
        recipe,
        command,
        title=f"Exporting {source.name} to ONNX with Optimum (fp32, {TASK})",
        failure=f"Optimum ONNX export failed on {source}",
        produced=lambda out: any(out.glob("*.onnx")),
        tools=_TOOLS,
        env=env,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the export subprocess: ``python -m flavorkit_hf.export SOURCE OUTPUT``."""
    parser = argparse.ArgumentParser(prog="python -m flavorkit_hf.export", description=__doc__)
    parser.add_argument("source", help="transformers checkpoint folder")
    parser.add_argument("output", help="empty folder for the ONNX export")
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)
    from optimum.exporters.onnx import main_export

    main_export(
        args.source,
        args.output,
        task=TASK,
        device="cpu",
        do_validation=False,
        trust_remote_code=args.trust_remote_code,
        local_files_only=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
