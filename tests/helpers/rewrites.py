"""Write a rewrite job's attempt files (PREFIX_rewrites.jsonl and the manifest, or the work files of a
running job) as the rewrite stage does, with every pass/fail decided by the real Validator.

The row format is the rewrite stage's contract (issue 27: one row per document and attempt); the
check values are measured with validation.py's own functions, so a threshold change moves them as
it would in a real run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from native_megatron.alignment.guidelines import load_guidelines
from native_megatron.alignment.validation import (
    _GARBLED,
    ValidationConfig,
    Validator,
    content_recall,
    repeated_fraction,
)
from native_megatron.data.cleaning import arabic_ratio
from tests.helpers.paths import ROOT, SAMPLE_CORPUS

GUIDELINES = ROOT / "examples" / "guidelines" / "native_alignment_ar.yaml"
META = {"backend": "openai", "model": "test/rewriter", "guidelines": "native-alignment@1.0"}
# What the fake rewriter does to a dialect word: the MSA word a careless rewriter would put instead.
TO_MSA = {"مش": "ليس", "ده": "هذا", "دي": "هذه", "عايز": "يريد", "ليه": "لماذا", "كده": "هكذا", "ازاي": "كيف",
          "شو": "ماذا", "هيك": "هكذا", "كتير": "كثيرا", "بدي": "أريد", "اللي": "الذي"}
XSS = '<script>document.title="pwned"</script><b id="xss-probe">bold?</b><img src=x onerror="alert(1)"> & "q"'


def check_values(cfg: ValidationConfig, source: str, output: str, finish: str, failed: list[str]) -> dict:
    """{check: {value, threshold, passed}} for the enabled checks, as the rewrite stage records them."""
    ratio = len(output.strip()) / max(1, len(source.strip()))
    measured = {
        "empty": (not output.strip(), None),
        "truncated": (finish == "length", None),
        "arabic_ratio": (round(arabic_ratio(output), 4), cfg.min_arabic_ratio),
        "length_ratio": (round(ratio, 4), [cfg.min_length_ratio, cfg.max_length_ratio]),
        "refusal": ("refusal" in failed, None),
        "repetition": (round(repeated_fraction(output), 4), cfg.max_repeated_fraction),
        "prompt_leak": ("prompt_leak" in failed, None),
        "garbled": (len(_GARBLED.findall(output)), None),
        "knowledge": (round(content_recall(source, output), 4), cfg.min_content_recall),
    }
    return {name: {"value": measured[name][0], "threshold": measured[name][1], "passed": name not in failed}
            for name in cfg.checks}


def attempt_rows(validator: Validator, doc: dict, outputs: list[tuple[str, str]], after_retry: str) -> list[dict]:
    """One row per attempt of ``doc`` ({id, file, line, text}); ``outputs`` holds (rewrite, finish reason)
    per attempt: one, or two when the first failed and was retried."""
    rows = []
    for n, (text, finish) in enumerate(outputs, 1):
        failed = validator.check(doc["text"], text, finish)
        decision = "accepted" if not failed else "retry" if n < len(outputs) else after_retry
        row = {"id": doc["id"], "file": doc["file"], "line": doc["line"], "attempt": n, "chunks": 1}
        if n == 1:
            row["source"] = doc["text"]
        row.update({"text": text, "finish_reasons": [finish], "prompt_tokens": 40 + len(doc["text"]) // 4,
                    "completion_tokens": len(text) // 4,
                    "checks": check_values(validator.config, doc["text"], text, finish, failed),
                    "failed_checks": failed, "decision": decision, **META})
        rows.append(row)
    return rows


def manifest_row(attempts: list[dict]) -> dict:
    last = attempts[-1]
    status = {"accepted": "rewritten"}.get(last["decision"], last["decision"])
    row = {"id": last["id"], "file": last["file"], "line": last["line"], "status": status}
    if last["failed_checks"]:
        row.update(reason="rewrite_failed_validation", failed_checks=last["failed_checks"])
    if len(attempts) > 1:
        row["retried"] = True
    return {**row, **META, "chunks": 1}


def polish(text: str) -> str:
    """A plausible rewrite: dialect words put in MSA, a sentence added."""
    words = re.split(r"(\s+)", text)
    return "".join(TO_MSA.get(w, w) for w in words) + "\nوهذا ملخص ما سبق."


def fake_outputs(i: int, text: str) -> tuple[list[tuple[str, str]], str]:
    """A rewriter's attempts for the ``i``-th document, cycling through what goes wrong in practice;
    and the policy after a failed retry."""
    kind = i % 6
    if kind == 0:
        return [(polish(text), "stop")], "kept_raw"
    if kind == 1:  # cut at the token limit, then a good retry
        return [(text[:len(text) // 3], "length"), (polish(text), "stop")], "kept_raw"
    if kind == 2:  # translated into English twice: kept raw
        return [("This article explains the topic in English instead.", "stop")] * 2, "kept_raw"
    if kind == 3:  # a refusal, then a loop: dropped
        loop = " ".join(["هذا النص مكرر مرة بعد مرة بلا توقف ولا معنى"] * 12)
        return [("عذراً، لا يمكنني إعادة كتابة هذا النص.", "stop"), (loop, "length")], "dropped"
    if kind == 4:  # replaced by other content
        return [("كان الطقس جميلا في الحديقة وجلس الأطفال يلعبون بالكرة حتى المساء ثم عادوا إلى بيوتهم "
                 "وتناولوا العشاء مع أهلهم وناموا مبكرين استعدادا ليوم جديد من الدراسة.", "stop")] * 2, "kept_raw"
    return [(polish(text), "stop")], "kept_raw"


def sample_documents(n: int, xss: bool = True) -> list[dict]:
    """The first ``n`` documents of the shipped sample, each starting with markup that must stay text
    (web text is full of it) when ``xss``."""
    docs = []
    with open(SAMPLE_CORPUS, encoding="utf-8") as f:
        for line, raw in zip(range(n), f):
            rec = json.loads(raw)
            text = XSS + "\n" + rec["text"] if xss else rec["text"]
            docs.append({"id": rec["id"], "file": str(SAMPLE_CORPUS.relative_to(ROOT)), "line": line, "text": text})
    return docs


def job_rows(docs: list[dict]) -> list[list[dict]]:
    """Each document's attempt rows, validated under the default settings and the shipped guidelines."""
    validator = Validator(ValidationConfig(), load_guidelines(GUIDELINES))
    return [attempt_rows(validator, d, *fake_outputs(i, d["text"])) for i, d in enumerate(docs)]


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_finished_job(prefix: str, docs: list[dict], dropped_earlier: int = 2) -> list[list[dict]]:
    """PREFIX_rewrites.jsonl and PREFIX_manifest.jsonl of a finished job; ``dropped_earlier`` documents
    were dropped by the prepare stage (exact duplicates) and never reached the rewriter."""
    per_doc = job_rows(docs)
    _write(Path(prefix + "_rewrites.jsonl"), [r for rows in per_doc for r in rows])
    early = [{"id": f"dup-{i}", "file": "corpus.jsonl", "line": 1000 + i, "status": "dropped",
              "reason": "exact_duplicate"} for i in range(dropped_earlier)]
    _write(Path(prefix + "_manifest.jsonl"), [manifest_row(rows) for rows in per_doc] + early)
    return per_doc


def write_running_job(prefix: str, docs: list[dict]) -> list[list[dict]]:
    """A job in the middle of its rewrite: shard 0 finished (rows and manifest under PREFIX_work/rewrite/),
    shard 1 in flight: its temporary file holds the second half's rows, the last one cut mid-line."""
    per_doc = job_rows(docs)
    half = len(per_doc) // 2
    work = Path(prefix + "_work") / "rewrite"
    _write(work / "shard-00000.rewrites.jsonl", [r for rows in per_doc[:half] for r in rows])
    _write(work / "shard-00000.manifest.jsonl", [manifest_row(rows) for rows in per_doc[:half]])
    flying = [json.dumps(r, ensure_ascii=False) for rows in per_doc[half:] for r in rows]
    cut = "\n".join(flying[:-1]) + "\n" + flying[-1][:len(flying[-1]) // 2]
    (work / ".shard-00001.rewrites.jsonl.tmp-1234").write_text(cut, encoding="utf-8")
    return per_doc
