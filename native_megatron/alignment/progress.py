"""Live progress of the rewrite stage, per document and per token, for one task and for a whole array.

One task shows documents done/total, output tokens/s, requests in flight, the
share of documents rewritten so far and an ETA: a tqdm bar on a terminal, a log
line at the first document and then every ``rewrite.progress_interval_s`` in a
batch job. At the same pace it writes ``progress-rank-NNNNN.json`` in the stage's
work directory, which ``python -m native_megatron.alignment.progress --prefix
PREFIX`` sums for every task of an array (the submit script prints that line).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import time
from pathlib import Path

from native_megatron.utils.io import atomic_write_json

logger = logging.getLogger(__name__)


def _eta(seconds: float | None) -> str:
    return "?" if seconds is None else str(datetime.timedelta(seconds=round(seconds)))


def describe(done: int, total: int, tokens: int, passed: int, in_flight: int, elapsed: float) -> str:
    """``64/403 docs (15.9%), 1,234 output tokens/s, 256 in flight, 93.8% rewritten, ETA 0:05:12``."""
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else None
    share = f"{100 * passed / done:.1f}%" if done else "-"
    pct = f" ({100 * done / total:.1f}%)" if total else ""
    return (f"{done}/{total} docs{pct}, {tokens / elapsed if elapsed > 0 else 0:,.0f} output tokens/s, "
            f"{in_flight} in flight, {share} rewritten, ETA {_eta(eta)}")


class RewriteProgress:
    """Counts finished documents of this task; shows and records them (see the module's docstring)."""

    def __init__(self, total: int, interval_s: float, enabled: bool, status_path: Path | None = None) -> None:
        self.total, self.interval_s, self.enabled, self.status_path = total, interval_s, enabled, status_path
        self.done = self.tokens = self.passed = self.in_flight = 0
        self.start = time.monotonic()
        self._logged_at: float | None = None
        self._bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="rewrite", unit="doc", dynamic_ncols=True)

    def document(self, completion_tokens: int, rewritten: bool) -> None:
        self.done += 1
        self.tokens += completion_tokens
        self.passed += int(rewritten)
        if self._bar is not None:
            self._bar.update(1)

    def show(self, in_flight: int, force: bool = False) -> None:
        """Refresh the bar, or log a line when one is due (the first document, then every interval_s)."""
        self.in_flight = in_flight
        elapsed = time.monotonic() - self.start
        if self._bar is not None:
            share = f"{100 * self.passed / self.done:.0f}%" if self.done else "-"
            self._bar.set_postfix_str(f"{self.tokens / max(elapsed, 1e-9):,.0f} tok/s, {in_flight} in flight, "
                                      f"{share} rewritten", refresh=False)
        now = time.monotonic()
        due = force or (self._logged_at is None and self.done > 0) or \
            (self._logged_at is not None and now - self._logged_at >= self.interval_s)
        if not due:
            return
        self._logged_at = now
        if self.enabled and self._bar is None:
            logger.info("rewrite: %s", describe(self.done, self.total, self.tokens, self.passed, in_flight, elapsed))
        if self.status_path is not None:
            atomic_write_json(self.status_path, {
                "documents_done": self.done, "documents_total": self.total, "completion_tokens": self.tokens,
                "rewritten": self.passed, "in_flight": in_flight, "elapsed_s": round(elapsed, 3),
                "updated": time.time()})

    def close(self) -> None:
        self.show(0, force=True)
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "RewriteProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def array_progress(work_dir: Path) -> str | None:
    """One line for every task that has reported in ``work_dir`` (the rewrite stage's directory)."""
    files = sorted(work_dir.glob("progress-rank-*.json"))
    if not files:
        return None
    rows = [json.loads(f.read_text(encoding="utf-8")) for f in files]
    done, total = sum(r["documents_done"] for r in rows), sum(r["documents_total"] for r in rows)
    elapsed = max(r["elapsed_s"] for r in rows)
    tokens = sum(r["completion_tokens"] for r in rows)
    line = describe(done, total, tokens, sum(r["rewritten"] for r in rows), sum(r["in_flight"] for r in rows),
                    elapsed)
    stale = sum(1 for r in rows if r["in_flight"] and time.time() - r["updated"] > 600)
    return f"{len(rows)} tasks: {line}" + (f"; {stale} silent for 10 minutes" if stale else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Progress of a rewrite array: every task's documents, tokens/s, "
                                            "pass rate and ETA, summed.")
    p.add_argument("--prefix", required=True, help="the run's output.prefix (reads PREFIX_work/rewrite)")
    args = p.parse_args(argv)
    line = array_progress(Path(args.prefix + "_work") / "rewrite")
    if line is None:
        print(f"no rewrite task has reported under {args.prefix}_work/rewrite yet", file=sys.stderr)
        return 1
    print(f"rewrite: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
