"""One document's way through the rewriter: redact, chunk and prompt; generate; join and validate; decide.

:class:`Rewriter` does it for a batch (one backend call for the chunks, one for the retries);
alignment/streaming.py does the same steps per document as requests come back. The CPU steps live
in :class:`DocumentWork`, built from plain settings so that a process pool can run them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from native_megatron.alignment.backends import RewriterBackend
from native_megatron.alignment.backends.base import Generation
from native_megatron.alignment.chunking import Chunk, join_chunks, split_document
from native_megatron.alignment.config import RewriteConfig
from native_megatron.alignment.guidelines import Guidelines
from native_megatron.alignment.validation import ValidationConfig, Validator, failed_checks
from native_megatron.data.manifest import DROPPED
from native_megatron.data.pii import PiiRedactor

REWRITTEN = "rewritten"
KEPT_RAW = "kept_raw"
# Backends that send document text out of this process, to a server that may be anyone's.
REMOTE_BACKENDS = ("openai",)


@dataclass
class Attempt:
    """One try at one document: the joined rewrite and what the validator made of it."""

    number: int                    # 1, or 2 for the retry
    text: str
    finish_reasons: list[str | None]
    prompt_tokens: int
    completion_tokens: int
    checks: dict[str, dict]        # Validator.check_details
    failed: list[str]


@dataclass
class Prepared:
    """A document ready to send: its row (text redacted when it leaves the machine), chunks and requests."""

    row: dict
    chunks: list[Chunk]
    requests: list[list[dict[str, str]]]


@dataclass
class DocResult:
    row: dict
    text: str | None          # what goes on to tokenization; None when dropped
    status: str
    failed: list[str] = field(default_factory=list)
    retried: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    chunks: int = 0
    attempts: list[Attempt] = field(default_factory=list)


class DocumentWork:
    """The client's CPU work on one document, before (redaction, chunks, prompts) and after (joining,
    validation) the backend. Built from plain settings, so that a process pool can hold one per worker."""

    def __init__(self, config: RewriteConfig, validation: ValidationConfig, guidelines: Guidelines,
                 count_tokens: Callable[[str], int], redact: bool) -> None:
        self.config, self.guidelines, self.count_tokens = config, guidelines, count_tokens
        self.validator = Validator(validation, guidelines)
        # The prepare stage redacted what it kept; this is for text that never went through it
        # (seed pairs from raw files, clean.redact_pii off) before it leaves the machine.
        self.redactor = PiiRedactor() if redact else None

    def prepare(self, row: dict) -> Prepared:
        if self.redactor is not None:
            # The redacted text is the document from here on: what is validated, kept raw or paired.
            row = dict(row, text=self.redactor.redact(row["text"])[0])
        chunks = split_document(row["text"], self.config.max_input_tokens, self.count_tokens)
        return Prepared(row, chunks, [self.guidelines.messages(c.text) for c in chunks])

    def judge(self, source: str, chunks: list[Chunk], gens: list[Generation], number: int) -> Attempt:
        text = join_chunks([g.text for g in gens], chunks)
        finish = [g.finish_reason for g in gens]
        checks = self.validator.check_details(source, text, "length" if "length" in finish else "stop")
        return Attempt(number, text, finish, sum(g.prompt_tokens for g in gens),
                       sum(g.completion_tokens for g in gens), checks, failed_checks(checks))


class Rewriter:
    """Rewrites documents with one backend under one set of guidelines: in batches (:meth:`rewrite`),
    or streamed by alignment/streaming.py, which uses the same steps."""

    def __init__(self, config: RewriteConfig, validation: ValidationConfig, backend: RewriterBackend,
                 guidelines: Guidelines) -> None:
        self.config, self.validation, self.backend, self.guidelines = config, validation, backend, guidelines
        self.meta = {"backend": backend.kind, "model": backend.model, "guidelines": guidelines.tag}
        self.redact = backend.kind in REMOTE_BACKENDS and config.redact_pii
        self.work = DocumentWork(config, validation, guidelines, backend.count_tokens, self.redact)

    def _generate(self, preps: list[Prepared], number: int) -> list[Attempt]:
        sampling = self.config.sampling if number == 1 else self.config.retry()
        outputs = iter(self.backend.generate([m for p in preps for m in p.requests], sampling))
        return [self.work.judge(p.row["text"], p.chunks, [next(outputs) for _ in p.chunks], number) for p in preps]

    def needs_retry(self, attempt: Attempt) -> bool:
        return bool(attempt.failed) and attempt.number == 1 and self.config.on_failure == "retry"

    def rewrite(self, rows: list[dict]) -> list[DocResult]:
        """Rewrite a batch: one backend call for every chunk, then one for the retries."""
        preps = [self.work.prepare(r) for r in rows]
        attempts = [[a] for a in self._generate(preps, 1)]
        again = [i for i, a in enumerate(attempts) if self.needs_retry(a[0])]
        if again:
            for i, a in zip(again, self._generate([preps[i] for i in again], 2)):
                attempts[i].append(a)
        return [self.finish(p, a) for p, a in zip(preps, attempts)]

    def finish(self, prep: Prepared, attempts: list[Attempt]) -> DocResult:
        """The document's outcome from its attempts: the last one's rewrite, or the failure policy."""
        last = attempts[-1]
        r = DocResult(prep.row, last.text, REWRITTEN, list(last.failed), len(attempts) > 1,
                      sum(a.prompt_tokens for a in attempts), sum(a.completion_tokens for a in attempts),
                      len(prep.chunks), attempts)
        if r.failed:
            policy = self.config.after_retry if self.config.on_failure == "retry" else self.config.on_failure
            r.status = KEPT_RAW if policy == "keep_raw" else DROPPED
            r.text = prep.row["text"] if policy == "keep_raw" else None
        return r

    def manifest_row(self, r: DocResult) -> dict:
        row = {"id": r.row["id"], "file": r.row["file"], "line": r.row["line"], "status": r.status}
        if r.failed:
            row["reason"] = "rewrite_failed_validation"
            row["failed_checks"] = r.failed
        if r.retried:
            row["retried"] = True
        row.update(self.meta)
        row["chunks"] = r.chunks
        return row

    def attempt_rows(self, r: DocResult) -> list[dict]:
        """The document's rows of ``rewrites.jsonl``, one per attempt (the contract in docs/alignment.md)."""
        rows = []
        for a in r.attempts:
            if not a.failed:
                decision = "accepted"
            elif self.needs_retry(a):
                decision = "retry"
            else:
                decision = "kept_raw" if r.status == KEPT_RAW else "dropped"
            row = {"id": r.row["id"], "file": r.row["file"], "line": r.row["line"], "attempt": a.number,
                   "chunks": r.chunks}
            if a.number == 1:
                row["source"] = r.row["text"]
            row.update({"text": a.text, "finish_reasons": a.finish_reasons, "prompt_tokens": a.prompt_tokens,
                        "completion_tokens": a.completion_tokens, "checks": a.checks, "failed_checks": a.failed,
                        "decision": decision, **self.meta})
            rows.append(row)
        return rows
