"""Seed pairs for training a small rewriter: a strong LLM rewrites a sample under the guidelines.

The paper's "alignment expert" step: (raw, rewritten) pairs from a strong model
(GPT-4-turbo there; any OpenAI-compatible endpoint here), validated by the
same checks as the pipeline, then exported as chat-format SFT data whose
prompt is exactly what the rewriting stage sends, so the trained "alignment
worker" sees at inference what it saw in training.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Iterable, Iterator

from native_megatron.alignment.guidelines import Guidelines
from native_megatron.alignment.rewrite import Rewriter

logger = logging.getLogger(__name__)


def sample_documents(rows: Iterable[dict], n: int, seed: int) -> list[dict]:
    """A uniform sample of ``n`` rows (reservoir sampling: one pass, bounded memory)."""
    rng = random.Random(seed)
    sample: list[dict] = []
    for i, row in enumerate(rows):
        if len(sample) < n:
            sample.append(row)
        else:
            j = rng.randint(0, i)
            if j < n:
                sample[j] = row
    return sorted(sample, key=lambda r: (r["file"], r["line"]))


def done_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    with open(path, encoding="utf-8") as f:
        return {json.loads(line)["id"] for line in f if line.strip()}


def generate_pairs(rewriter: Rewriter, rows: list[dict], out: Path, batch_size: int) -> dict:
    """Rewrite ``rows`` and append one pair per document to ``out``; documents already there are skipped,
    so an interrupted run continues where it stopped."""
    have = done_ids(out)
    todo = [r for r in rows if r["id"] not in have]
    counts = {"skipped_existing": len(rows) - len(todo), "passed": 0, "failed": 0}
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            for r in rewriter.rewrite(batch):
                ok = not r.failed
                counts["passed" if ok else "failed"] += 1
                rewritten = r.text if ok else None
                f.write(json.dumps({"id": r.row["id"], "raw": r.row["text"], "rewritten": rewritten,
                                    "failed_checks": r.failed, **rewriter.meta}, ensure_ascii=False) + "\n")
            f.flush()
    return counts


def sft_records(pairs: Iterable[dict], guidelines: Guidelines, include_failed: bool = False) -> Iterator[dict]:
    """Chat-format SFT examples: the rewriting stage's exact prompt, and the expert's rewrite as the answer."""
    for p in pairs:
        if p.get("rewritten") is None and not include_failed:
            continue
        messages = guidelines.messages(p["raw"])
        messages.append({"role": "assistant", "content": p["rewritten"] or p["raw"]})
        yield {"id": p["id"], "messages": messages}
