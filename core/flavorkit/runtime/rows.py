"""The per-row decoding step every backend needs: end of sequence, ``max_tokens`` and UTF-8-safe text.

Internal: not part of the plugin SDK; import its public names from :mod:`flavorkit.sdk`.

A backend's token loop produces one token id per row and step. :class:`TokenRow` turns each id into
the :class:`~flavorkit.types.Delta` to yield: it counts the token, ends the row with ``"stop"`` on an
end-of-sequence id (which is never decoded) or with ``"length"`` at ``max_tokens``, and asks a
:class:`TextStream` for the id's new text. A text stream never releases part of a multi-byte
character while the row goes on; when the row ends it releases what it still holds, decoded as the
tokenizer decodes the whole completion (an incomplete character becomes U+FFFD), so the text of a
row always equals its generated tokens decoded at once.

Three text streams cover the usual runtimes:

- :class:`WindowDecoder` for tokenizers that decode a list of ids (transformers, optimum-onnx);
- :class:`ByteDecoder` for runtimes that give the bytes of each token (llama.cpp);
- :class:`NativeStream` for a runtime's own incremental decoder that holds back incomplete characters
  (onnxruntime-genai's ``TokenizerStream``), completed by one whole-sequence decode at the end.

The module is plain Python with no dependencies, and cheap per token: a method call or two around
the runtime's own decoding.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Container, Sequence
from typing import Protocol, runtime_checkable

from flavorkit.types import Delta, FinishReason

__all__ = ["ByteDecoder", "NativeStream", "TextStream", "TokenRow", "WindowDecoder"]

_REPLACEMENT = "\ufffd"


@runtime_checkable
class TextStream(Protocol):
    """Incremental detokenization of one sequence: text increments that never split a character."""

    def push(self, token: int) -> str:
        """Add one generated token; return the text that is now complete (possibly empty)."""
        ...

    def flush(self) -> str:
        """End the sequence: return the text still held back, an incomplete character as U+FFFD."""
        ...


class WindowDecoder:
    """A :class:`TextStream` over a tokenizer's ``decode(ids) -> str`` (which writes bad UTF-8 as U+FFFD).

    Byte-level tokenizers spread one character over several tokens, and decoding those one by one
    yields U+FFFD. Text is therefore released only when the decoded tail is stable (does not end in
    U+FFFD): a short window of recent ids is decoded, and what it adds beyond the text already
    released from that window is emitted, which also keeps SentencePiece's leading-space rule.
    ``decode`` should skip special tokens.
    """

    __slots__ = ("_decode", "_ids", "_prefix", "_read")

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _pending(self) -> tuple[str, str]:
        ids, prefix, read = self._ids, self._prefix, self._read
        released = self._decode(ids[prefix:read]) if read > prefix else ""
        return released, self._decode(ids[prefix:])

    def push(self, token: int) -> str:
        """Add one token; return the text that is now stable (possibly empty)."""
        self._ids.append(token)
        released, full = self._pending()
        if len(full) > len(released) and not full.endswith(_REPLACEMENT):
            self._prefix, self._read = self._read, len(self._ids)
            return full[len(released) :]
        return ""

    def flush(self) -> str:
        """Release whatever is held back, an incomplete character decoded as U+FFFD."""
        if self._read == len(self._ids):
            return ""
        released, full = self._pending()
        self._prefix = self._read = len(self._ids)
        return full[len(released) :]


class ByteDecoder:
    """A :class:`TextStream` over the raw bytes of each token, decoded as UTF-8 with U+FFFD for bad bytes."""

    __slots__ = ("_decoder", "_piece")

    def __init__(self, piece: Callable[[int], bytes]) -> None:
        self._piece = piece
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        """Add one token's bytes; return the characters they complete."""
        return self._decoder.decode(self._piece(token))

    def flush(self) -> str:
        """Release bytes of an incomplete character as U+FFFD."""
        return self._decoder.decode(b"", final=True)


class NativeStream:
    """A :class:`TextStream` around a runtime's own incremental decoder, completed at the end.

    ``push`` is the runtime's decoder (e.g. onnxruntime-genai's ``TokenizerStream.decode``), which
    holds back an incomplete character, even behind text it releases for the same token, and drops it
    if the sequence ends there. ``decode`` decodes a list of ids at once: :meth:`flush` decodes the
    whole sequence once and returns what it has beyond the text already released. Should the two
    disagree (a runtime that drops invalid bytes its ``decode`` keeps), nothing more is released.
    """

    __slots__ = ("_decode", "_ids", "_push", "_text")

    def __init__(self, push: Callable[[int], str], decode: Callable[[Sequence[int]], str]) -> None:
        self._push = push
        self._decode = decode
        self._ids: list[int] = []
        self._text: list[str] = []

    def push(self, token: int) -> str:
        """Add one token; return the runtime decoder's text for it."""
        self._ids.append(token)
        text = self._push(token)
        self._text.append(text)
        return text

    def flush(self) -> str:
        """Decode the whole sequence; return what the runtime's decoder held back (U+FFFD for a cut character)."""
        if not self._ids:
            return ""
        released = "".join(self._text)
        whole = self._decode(self._ids)
        if not whole.startswith(released):
            return ""
        self._text = [whole]
        return whole[len(released) :]


class TokenRow:
    """One request's step from generated token ids to :class:`~flavorkit.types.Delta` values.

    Call :meth:`accept` with each token the row produces; yield the delta it returns. Every token is
    counted (``tokens=1``), the end-of-sequence one included. A token in ``eos_ids`` ends the row with
    ``"stop"`` and is not decoded; the ``max_tokens``-th token ends it with ``"length"``. The final
    delta carries the text the stream still held back, so the row's text equals its tokens decoded
    at once. After the final delta :attr:`finish_reason` is set and the row takes no more tokens.
    """

    __slots__ = ("eos_ids", "finish_reason", "index", "max_tokens", "produced", "text")

    def __init__(self, index: int, max_tokens: int, eos_ids: Container[int], text: TextStream) -> None:
        self.index = index
        self.max_tokens = max_tokens
        self.eos_ids = eos_ids
        self.text = text
        #: Tokens accepted so far.
        self.produced = 0
        #: ``"stop"`` or ``"length"`` once the row has ended, else None.
        self.finish_reason: FinishReason | None = None

    @property
    def done(self) -> bool:
        """True once the row has ended (its last delta was returned)."""
        return self.finish_reason is not None

    def accept(self, token: int) -> Delta:
        """Take the row's next token; return its delta, which carries the finish reason when the row ends."""
        if self.finish_reason is not None:
            raise RuntimeError(f"row {self.index} already finished ({self.finish_reason}); it takes no more tokens")
        self.produced += 1
        if token in self.eos_ids:
            self.finish_reason = "stop"
            return Delta(self.index, self.text.flush(), 1, "stop")
        piece = self.text.push(token)
        if self.produced >= self.max_tokens:
            self.finish_reason = "length"
            return Delta(self.index, piece + self.text.flush(), 1, "length")
        return Delta(self.index, piece, 1)
