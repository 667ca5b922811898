"""A small Arabic corpus whose documents steer the fake rewriters (tests/helpers/fakes.py, servers.py).

Document ``i`` is unique (its number and ``i + 1`` letters), and three carry the markers the fakes
act on: 3 REFUSE (the rewriter refuses), 7 TRUNCATE (its answer is cut), 11 FLAKY (fails once)."""

from __future__ import annotations

import json
from pathlib import Path

BODY = ("تحدث الخبراء في المؤتمر السنوي عن مستقبل الزراعة في المناطق الجافة واستخدام تقنيات الري بالتنقيط "
        "وتحلية المياه، وأكدوا أن الاستثمار في البحث العلمي هو الطريق الأهم لتحقيق الأمن الغذائي. ")
MARKERS = {3: "REFUSE", 7: "TRUNCATE", 11: "FLAKY"}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def marked_corpus(tmp_path: Path, n: int = 24) -> Path:
    """``tmp_path/in.jsonl`` with ``n`` documents ``d00``..."""
    rows = [{"id": f"d{i:02d}",
             "text": f"المقال رقم {i} عن موضوع مختلف {'ب' * (i + 1)}. {BODY}{MARKERS.get(i, '')} يا غبي!!!"}
            for i in range(n)]
    return write_jsonl(tmp_path / "in.jsonl", rows)
