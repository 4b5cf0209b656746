"""Stop strings detected on device, exactly, however the model tokenizes them.

A stop string such as ``"</answer>"`` is produced by many token sequences
(``"</answer>"``, ``"</" "answer" ">"``, ``"answer>."`` ending inside a token ...),
so matching token-id suffixes of a few tokenizations misses some. We match
*bytes* instead: a host-side table gives every token id its UTF-8 bytes, and each
row carries the last ``K`` bytes of its completion (``K`` = longest stop string
minus one). When a token is emitted, an occurrence that straddles the token's
start must end within its first ``K`` bytes, so it is found in
``last K bytes + token's first K bytes``; an occurrence lying wholly inside the
token is a precomputed per-token flag. All of this is a few small gathers and
compares per step: no host round trip.

Guarantee: a row stops at the first token at which the concatenated bytes of
its completion tokens contain a stop string, where special tokens contribute no
bytes; that is ``tokenizer.decode(ids, skip_special_tokens=True,
clean_up_tokenization_spaces=False)``. The prompt never counts. The completion
keeps the whole final token, which may carry bytes after the stop string (e.g.
``"</answer>\\n"``). Token bytes are exact for byte-level BPE vocabularies
(GPT-2, Llama 3, Qwen2, SmolLM2) and for SentencePiece vocabularies with byte
fallback (``"\u2581"`` is a space, ``<0xNN>`` a byte; the space a SentencePiece
decoder strips from the very start of a text is kept); other vocabularies fall
back to each token's string.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
_NO_BYTE = -1  # padding in byte tables and buffers; never equal to a real byte
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class StopTables(NamedTuple):
    """Device tables for one tokenizer and one set of stop strings (K = longest - 1)."""

    head: Array  # [V, K] int16: each token's first K bytes, _NO_BYTE-padded on the right
    tail: Array  # [V, K] int16: each token's last K bytes, _NO_BYTE-padded on the left
    length: Array  # [V] int32: each token's byte length
    contains: Array  # [V] bool: a stop string lies wholly inside the token
    strings: Array  # [S, K + 1] int16: stop strings, right-aligned
    care: Array  # [S, K + 1] bool: which positions of ``strings`` are real bytes


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte -> printable-unicode map, inverted (what byte-level BPE vocabularies use)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
                 + list(range(ord("\xae"), ord("\xff") + 1)))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def token_bytes(tokenizer, vocab_size: int) -> list[bytes]:
    """The bytes each token id contributes to decoded text (``b""`` for special/unused ids)."""
    n = min(len(tokenizer), vocab_size)
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    added = {i: t for i, t in tokenizer.added_tokens_decoder.items() if i < n}
    regular = [t for i, t in enumerate(tokens) if i not in added and t is not None]
    decoder = _byte_decoder()
    byte_level = all(ch in decoder for t in regular for ch in t)
    out = []
    for i, tok in enumerate(tokens):
        if i in added:
            out.append(b"" if added[i].special else added[i].content.encode())
        elif tok is None:
            out.append(b"")
        elif byte_level:
            out.append(bytes(decoder[ch] for ch in tok))
        elif match := _BYTE_FALLBACK.match(tok):
            out.append(bytes([int(match.group(1), 16)]))
        else:
            out.append(tok.replace("\u2581", " ").encode())
    return out + [b""] * (vocab_size - n)


def build_stop_tables(vocab_bytes: Sequence[bytes], stop_strings: Sequence[str]) -> StopTables:
    """Host-side tables for :func:`stop_step` (numpy; put them on device once per call)."""
    encoded = [s.encode() for s in stop_strings]
    if not encoded or any(not s for s in encoded):
        raise ValueError(f"stop strings must be non-empty, got {list(stop_strings)!r}")
    k = max(max(len(s) for s in encoded) - 1, 1)
    v = len(vocab_bytes)
    head = np.full((v, k), _NO_BYTE, np.int16)
    tail = np.full((v, k), _NO_BYTE, np.int16)
    length = np.zeros(v, np.int32)
    contains = np.zeros(v, bool)
    for i, b in enumerate(vocab_bytes):
        if not b:
            continue
        arr = np.frombuffer(b, np.uint8)
        head[i, :min(len(b), k)] = arr[:k]
        tail[i, k - min(len(b), k):] = arr[-k:]
        length[i] = len(b)
        contains[i] = any(s in b for s in encoded)
    strings = np.full((len(encoded), k + 1), _NO_BYTE, np.int16)
    for j, s in enumerate(encoded):
        strings[j, k + 1 - len(s):] = np.frombuffer(s, np.uint8)
    return StopTables(head, tail, length, contains, strings, strings != _NO_BYTE)


def empty_buffer(rows: int, tables: StopTables) -> Array:
    """The per-row byte history before any completion token (the prompt never matches)."""
    return jnp.full((rows, tables.head.shape[1]), _NO_BYTE, jnp.int16)


def stop_step(buffer: Array, tokens: Array, tables: StopTables) -> tuple[Array, Array]:
    """Append one token per row to its byte history; True where a stop string now occurs.

    ``buffer`` [N, K] holds each row's last K completion bytes (right-aligned).
    Returns ``(new_buffer, hit)``.
    """
    k = buffer.shape[1]
    head, tail = tables.head[tokens], tables.tail[tokens]
    n = tables.length[tokens]
    joined = jnp.concatenate([buffer, head], axis=1)  # [N, 2K]
    # Windows of K + 1 bytes ending at each of the token's first K bytes.
    windows = jnp.stack([joined[:, e - k:e + 1] for e in range(k, 2 * k)], axis=1)  # [N, K, K+1]
    same = (windows[:, :, None, :] == tables.strings) | ~tables.care  # [N, K, S, K+1]
    ends_in_token = jnp.arange(k) < n[:, None]  # [N, K]
    hit = (same.all(-1).any(-1) & ends_in_token).any(-1) | tables.contains[tokens]
    shift = jnp.minimum(n, k)[:, None] + jnp.arange(k)
    shifted = jnp.take_along_axis(joined, shift, axis=1)
    return jnp.where(n[:, None] >= k, tail, shifted), hit
