"""An in-process backend for testing the rewrite stage's logic (chunking, validation, policies, resumption)
without a language model. Backends themselves are tested against real models elsewhere."""

from __future__ import annotations

import re

from native_megatron.alignment.backends import BackendUnavailable, Generation, RewriterBackend

DOC_RE = re.compile(r"<document>\n(.*)\n</document>", re.S)


def document_of(messages) -> str:
    return DOC_RE.search(messages[-1]["content"]).group(1)


class PolishingBackend(RewriterBackend):
    """Rewrites by a fixed, faithful edit (insults removed, '!!!' -> '!'); misbehaves on request:
    a chunk containing REFUSE gets a refusal, TRUNCATE a cut-off answer, FLAKY a refusal on the
    first try only. ``fail_after`` calls it raises BackendUnavailable (a dead server)."""

    kind = "fake"
    model = "polisher"

    def __init__(self, fail_after: int | None = None, words_per_token: int = 1) -> None:
        self.calls = 0
        self.requests = 0
        self.samplings = []   # the sampling of each call, in order
        self.fail_after = fail_after
        self.seen_flaky: set[str] = set()

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, requests, sampling):
        self.calls += 1
        self.samplings.append(sampling)
        if self.fail_after is not None and self.calls > self.fail_after:
            raise BackendUnavailable("server went away")
        out = []
        for messages in requests:
            self.requests += 1
            doc = document_of(messages)
            if "REFUSE" in doc:
                out.append(Generation("I'm sorry, I can't help with rewriting this document.", "stop"))
            elif "TRUNCATE" in doc:
                out.append(Generation(doc[: len(doc) // 2], "length"))
            elif "FLAKY" in doc and doc not in self.seen_flaky:
                self.seen_flaky.add(doc)
                out.append(Generation("عذراً، لا يمكنني إعادة كتابة هذا النص.", "stop"))
            else:
                text = re.sub(r"\s*يا غبي", "", doc).replace("!!!", "!")
                out.append(Generation(text, "stop", len(doc.split()), len(text.split())))
        return out
