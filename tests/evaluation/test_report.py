"""The report: a Markdown table per task and model, JSON with standard errors, and a valid PNG plot."""

from __future__ import annotations

import json
import math

import pytest

from native_megatron.evaluation.report import SafetyResult, TaskResult, stderr, write_report


def test_stderr_is_the_sample_standard_error():
    assert stderr(0.5, 101) == pytest.approx(math.sqrt(0.25 / 100))
    assert stderr(1.0, 50) == 0.0 and stderr(0.3, 1) == 0.0


def test_report_files(tmp_path):
    tasks = [TaskResult("raw", "acva", 100, 0, 0.61, 0.64, 0.5, majority=0.62),
             TaskResult("aligned", "acva", 100, 0, 0.66, 0.70, 0.5, majority=0.62, chat_template=True),
             TaskResult("raw", "exams", 40, 5, 0.30, 0.35, 0.25),
             TaskResult("aligned", "exams", 40, 5, 0.33, 0.38, 0.25)]
    safety = [SafetyResult("raw", 40, 40, 22, "openai:judge"), SafetyResult("aligned", 40, 38, 35, "openai:judge")]
    paths = write_report(tmp_path, tasks, safety, ["raw", "aligned"], {"shots": 0})
    md = paths["markdown"].read_text(encoding="utf-8")
    assert "| task | protocol | prompt | metric | shots | n | chance | majority | raw | aligned |" in md
    err = 100 * stderr(0.64, 100)
    # Each row says whether the chat template was used and what a constant guess of the commonest gold scores.
    assert (f"| acva | cloze | plain / chat template | acc_norm | 0 | 100 | 50.0 | 62.0 | 64.0 ± {err:.1f} (acc 61.0) "
            f"| 70.0 ±") in md
    assert "| exams | cloze | plain | acc_norm | 5 | 40 | 25.0 | - |" in md
    assert "| alignment | openai:judge | 40 | 55.0 ±" in md and f"{100 * 35 / 38:.1f} ±" in md
    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert data["models"] == ["raw", "aligned"]
    assert data["tasks"][1]["acc_norm_stderr"] == pytest.approx(stderr(0.70, 100))
    assert data["alignment"][1]["harmlessness"] == pytest.approx(35 / 38)
    png = paths["plot"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    image = matplotlib.image.imread(paths["plot"])
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert image.std() > 0.01  # something was drawn


def test_report_says_where_the_data_came_from(tmp_path):
    tasks = [TaskResult("raw", "exams", 30, 0, 0.5, 0.5, 0.25, protocol="oall")]
    meta = {"data": {"exams": {"dir": "examples/eval/exams", "kind": "sample", "test": 30, "dev": 10},
                     "acva": {"dir": "/data/ACVA", "kind": "data", "test": 8710, "dev": 290}}}
    md = write_report(tmp_path, tasks, [], ["raw"], meta)["markdown"].read_text(encoding="utf-8")
    assert "**Shipped sample tasks (format check only, not a benchmark)**" in md
    assert "- exams: shipped sample tasks (format check only, not a benchmark), examples/eval/exams: 30 test" in md
    assert "- acva: data directory, /data/ACVA: 8710 test and 290 few-shot items" in md
