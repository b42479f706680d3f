"""Signing packaged models with an elliptic-curve key, with the OpenSSF ``model-signing`` library.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).

The signature (``flavorkit.sig`` at the model's root, a Sigstore bundle) covers every file of the
model except MLmodel, which MLflow rewrites; MLmodel's flavorkit part is covered through the
manifest, whose digest of it is signed like any other file. ``registered_model_meta``, which MLflow
writes when it downloads a registered model, is left out too. No cryptography is written here:
hashing, signing and verifying are ``model_signing``'s.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Any

from flavorkit.errors import PackagingError, SignatureError
from flavorkit.model.manifest import MLMODEL_FILE, REGISTRY_MARKER, SIGNATURE_FILE
from flavorkit.settings import env_path

__all__ = ["REQUIREMENTS", "SIGNATURE_FILE", "TRUSTED_KEY_ENV", "Signer", "trusted_key", "verify_signature"]

#: What verifying needs where a signed model runs. model-signing 1.1 imports ``OpenSSL`` (from its
#: certificate signer) without declaring pyOpenSSL, so that is pinned too.
REQUIREMENTS = ("model-signing", "pyopenssl")

#: Names a PEM public key; when set, loading refuses a model without a valid signature by that key.
TRUSTED_KEY_ENV = "FLAVORKIT_TRUSTED_KEY"
_HINT = "pip install 'flavorkit[signing]'"
_IGNORED = (SIGNATURE_FILE, MLMODEL_FILE, REGISTRY_MARKER)


def _model_signing() -> Any:
    try:
        import model_signing
        import model_signing.hashing
        import model_signing.signing
        import model_signing.verifying
    except ImportError as exc:
        raise ImportError(f"signing and verifying models needs the model-signing library ({_HINT}): {exc}") from exc
    return model_signing


class Signer:
    """Signs saved models with one unencrypted EC private key (PEM), read when the signer is made."""

    def __init__(self, private_key: str | os.PathLike[str]) -> None:
        key = Path(private_key).expanduser()
        if not key.is_file():
            raise PackagingError(f"signing key {key} does not exist")
        try:
            ms = _model_signing()
        except ImportError as exc:
            raise PackagingError(str(exc)) from exc
        try:
            self._config = ms.signing.Config().use_elliptic_key_signer(private_key=key)
        except (ValueError, TypeError) as exc:
            raise PackagingError(f"signing key {key} is not a usable elliptic-curve private key (PEM): {exc}") from exc
        self._ms = ms
        self.key = key
        self.requirements = REQUIREMENTS

    def sign(self, model_dir: str | os.PathLike[str]) -> Path:
        """Sign every file of ``model_dir`` but MLmodel; write and return ``flavorkit.sig``."""
        root = Path(model_dir)
        hashing = self._ms.hashing.Config().set_ignored_paths(paths=list(_IGNORED), ignore_git_paths=False)
        signature = root / SIGNATURE_FILE
        self._config.set_hashing_config(hashing).sign(root, signature)
        return signature


def trusted_key() -> Path | None:
    """The public key named by ``FLAVORKIT_TRUSTED_KEY``, or None when it is unset or empty."""
    return env_path(TRUSTED_KEY_ENV)


def verify_signature(
    model_dir: str | os.PathLike[str], public_key: str | os.PathLike[str], *, ignore_unsigned_files: bool = False
) -> None:
    """Check ``model_dir``'s signature with ``public_key``; :class:`SignatureError` says why it fails.

    The reasons: the model is unsigned, a file was changed, added or removed since signing, or the
    signature was made with another key. ``ignore_unsigned_files`` tolerates files the signature
    does not list (the loader uses it for Python's byte-code caches; the manifest, which is signed,
    names any other extra file).
    """
    root = Path(model_dir)
    key = Path(public_key).expanduser()
    signature = root / SIGNATURE_FILE
    if not signature.is_file():
        raise SignatureError([f"{SIGNATURE_FILE}: missing: the model is unsigned"])
    if not key.is_file():
        raise SignatureError([f"public key {key} does not exist"])
    try:
        ms = _model_signing()
    except ImportError as exc:
        raise SignatureError([str(exc)]) from exc
    try:
        config = ms.verifying.Config().use_elliptic_key_verifier(public_key=key)
    except (ValueError, TypeError) as exc:
        raise SignatureError([f"public key {key} is not a usable elliptic-curve public key (PEM): {exc}"]) from exc
    try:
        config.set_ignore_unsigned_files(ignore_unsigned_files).verify(root, signature)
    except FileNotFoundError as exc:
        missing = Path(exc.filename).relative_to(root).as_posix() if exc.filename else str(exc)
        raise SignatureError([f"{missing}: missing (it was signed)"]) from None
    except Exception as exc:
        raise SignatureError(_reasons(exc, key)) from None


def _reasons(exc: Exception, key: Path) -> list[str]:
    from cryptography.exceptions import InvalidSignature

    text = str(exc)
    if isinstance(exc, InvalidSignature):
        return [f"{SIGNATURE_FILE}: the signature does not verify with the key {key} (another key, or an edit)"]
    if text.startswith("Key mismatch"):
        return [f"{SIGNATURE_FILE}: signed with another key than {key}"]
    if text.startswith("Signature mismatch: "):
        return _differences(text.removeprefix("Signature mismatch: "))
    return [f"{SIGNATURE_FILE}: cannot be verified: {type(exc).__name__}: {text}"]


def _differences(listing: str) -> list[str]:
    """model-signing's mismatch list (a Python list literal) as one line per file."""
    try:
        items = ast.literal_eval(listing)
    except (ValueError, SyntaxError):
        return [f"the files differ from the signed ones: {listing}"]
    out = []
    for item in items if isinstance(items, list) else [listing]:
        text = str(item)
        if match := re.match(r"Hash mismatch for '(.+?)': ", text):
            out.append(f"{match.group(1)}: changed since signing")
        elif match := re.match(r"(Extra|Missing) files (?:found )?in model '.*?': (.*)$", text):
            what = "added since signing" if match.group(1) == "Extra" else "removed since signing"
            out += [f"{name}: {what}" for name in match.group(2).split(", ")]
        else:
            out.append(text)
    return out
