"""Split documents longer than the rewriter's context on paragraph and sentence boundaries.

``split_document`` returns contiguous pieces whose concatenation is exactly the
document; each piece fits ``max_tokens`` (by the given counter) unless a single
word does not. ``join_chunks`` puts rewritten pieces back in order, restoring
the whitespace that separated them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

# A sentence ends at . ! ? ؟ … (possibly repeated), or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?؟…])\s+|\n")
_TRAILING_WS = re.compile(r"\s*$")


@dataclass(frozen=True)
class Chunk:
    text: str        # the piece without its trailing whitespace
    trailing: str    # the whitespace that followed it in the document


def _pieces(text: str, pattern: re.Pattern) -> list[str]:
    """Split after each match, keeping the separators with the piece before them."""
    out, start = [], 0
    for m in pattern.finditer(text):
        if m.end() > start:
            out.append(text[start:m.end()])
            start = m.end()
    if start < len(text):
        out.append(text[start:])
    return out


def _split(text: str, max_tokens: int, count: Callable[[str], int]) -> list[str]:
    if count(text) <= max_tokens:
        return [text]
    for pattern in (re.compile(r"\n\s*"), _SENTENCE_END, re.compile(r"\s+")):
        parts = _pieces(text, pattern)
        if len(parts) > 1:
            break
    else:
        return [text]  # one unbreakable word: send it as it is
    chunks, current = [], ""
    for part in parts:
        if current and count(current + part) > max_tokens:
            chunks.append(current)
            current = ""
        if count(part) > max_tokens:
            chunks.extend(_split(part, max_tokens, count))
        else:
            current += part
    if current:
        chunks.append(current)
    return chunks


def split_document(text: str, max_tokens: int, count: Callable[[str], int]) -> list[Chunk]:
    """Pieces of ``text`` of at most ``max_tokens`` tokens each, in order."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    out = []
    for piece in _split(text, max_tokens, count):
        trailing = _TRAILING_WS.search(piece).group(0)
        out.append(Chunk(piece[: len(piece) - len(trailing)], trailing))
    return out


def join_chunks(rewritten: list[str], chunks: list[Chunk]) -> str:
    """Rewritten pieces back into one document, separated as the originals were."""
    if len(rewritten) != len(chunks):
        raise ValueError("one rewrite per chunk expected")
    return "".join(r.strip() + c.trailing for r, c in zip(rewritten, chunks)).strip()
