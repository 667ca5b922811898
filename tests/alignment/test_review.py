"""The review page (tools/review_rewrites.py): a finished or running job's attempts -> one HTML file,
checked in a real headless Chromium."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from native_megatron.alignment.review import load_review
from native_megatron.alignment.review_page import word_diff
from native_megatron.cli.review import main
from tests.helpers.browser import require_chromium, run_chromium
from tests.helpers.paths import ROOT
from tests.helpers.rewrites import XSS, sample_documents, write_finished_job, write_running_job


def test_a_running_job_is_read_from_its_work_files(tmp_path):
    prefix = str(tmp_path / "job")
    per_doc = write_running_job(prefix, sample_documents(12))
    work = tmp_path / "job_work" / "rewrite"
    # shard 0 finished while being listed: its temporary file is still there beside the final one;
    # a killed try at shard 1 left a temporary file whose rows the new try writes again
    (work / ".shard-00000.rewrites.jsonl.tmp-99").write_bytes((work / "shard-00000.rewrites.jsonl").read_bytes())
    flying = (work / ".shard-00001.rewrites.jsonl.tmp-1234").read_bytes().split(b"\n")
    (work / ".shard-00001.rewrites.jsonl.tmp-0001").write_bytes(b"\n".join(flying[:3]) + b"\n")
    review = load_review(prefix, sample_size=100)
    assert review.running and review.skipped_cut_lines == 1
    # every attempt once, in input order; the cut row is the last attempt of the last document
    want = [[(r["id"], r["attempt"]) for r in rows] for rows in per_doc]
    want[-1] = want[-1][:-1]
    assert [[(d.id, a["attempt"]) for a in d.attempts] for d in review.sample] == [w for w in want if w]
    assert review.attempts == sum(map(len, want)) and review.documents == len([w for w in want if w])
    assert review.statuses["rewritten"] + review.statuses["kept_raw"] + review.statuses["dropped"] == 6
    assert review.sample[0].manifest["status"] == "rewritten"
    assert review.sample[-1].manifest is None      # shard 1 has no manifest yet


def test_the_sample_has_every_filter_and_follows_the_seed(tmp_path):
    prefix = str(tmp_path / "job")
    write_finished_job(prefix, sample_documents(30))
    sample = load_review(prefix, 8, seed=1).sample
    assert [d.id for d in sample] == [d.id for d in load_review(prefix, 8, seed=1).sample]
    assert [d.id for d in sample] != [d.id for d in load_review(prefix, 8, seed=2).sample]
    assert len(sample) == 8 and any(not d.failed_checks for d in sample)
    everything = load_review(prefix, 100)
    assert {c for d in everything.sample for c in d.failed_any} == {c for d in sample for c in d.failed_any}


def test_word_diff_marks_changes_and_escapes():
    left, right = word_diff("هذا <b>نص</b> مش جميل", "هذا <b>نص</b> ليس جميل")
    assert left == "هذا &lt;b&gt;نص&lt;/b&gt; <del>مش </del>جميل"
    assert right == "هذا &lt;b&gt;نص&lt;/b&gt; <ins>ليس </ins>جميل"
    left, right = word_diff("a b c <d>", "a x c <d>", max_words=2)   # long texts: the tail is not compared
    assert left.endswith("past 2 words] </span>c &lt;d&gt;") and "<ins>x </ins>" in right


def test_mistakes_and_damage_give_one_line(tmp_path, capsys):
    assert main(["--prefix", str(tmp_path / "none"), "--out", str(tmp_path / "r.html")]) == 2
    assert "no rewrite attempts at" in capsys.readouterr().err
    unwritable = tmp_path / "ro"
    unwritable.mkdir(mode=0o500)
    if os.access(unwritable, os.W_OK):   # root writes anywhere: a path under a file cannot be written by anyone
        unwritable = tmp_path / "a-file"
        unwritable.write_text("x")
    assert main(["--prefix", str(tmp_path / "none"), "--out", str(unwritable / "r.html")]) == 2
    assert "is not writable" in capsys.readouterr().err
    prefix = str(tmp_path / "job")
    write_finished_job(prefix, sample_documents(4))
    path = Path(prefix + "_rewrites.jsonl")
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1][:40]                           # a finished file is never cut: damage
    path.write_bytes(b"\n".join(lines))
    assert main(["--prefix", prefix, "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 2 is not a JSON row" in err and not (tmp_path / "r.html").exists()


class Articles(HTMLParser):
    """The attributes of every <article> and <img> of a page, and whether an injected element exists."""

    def __init__(self):
        super().__init__()
        self.articles, self.images, self.injected, self.rtl = [], [], False, 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "article":
            self.articles.append(a)
        elif tag == "img":
            self.images.append(a)
        self.injected |= a.get("id") == "xss-probe" or "onerror" in a
        self.rtl += a.get("dir") == "rtl" and a.get("lang") == "ar"


@pytest.mark.slow
def test_the_page_in_a_real_browser(tmp_path):
    chromium = require_chromium()
    prefix = str(tmp_path / "job")
    per_doc = write_finished_job(prefix, sample_documents(30))
    out = tmp_path / "review.html"
    script = ROOT / "tools" / "review_rewrites.py"
    assert os.access(script, os.X_OK)
    done = subprocess.run([sys.executable, str(script), "--prefix", prefix, "--out", str(out),
                           "--sample", "10", "--seed", "3"], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "10 of 30 documents shown" in done.stdout

    url = out.as_uri() + "#filter=rejected:knowledge"
    page = Articles()
    dom = run_chromium(chromium, url, tmp_path, "--dump-dom")
    page.feed(dom)
    assert len(page.articles) == 10
    figures = {i["id"] for i in page.images if i.get("src", "").startswith("data:image/png;base64,")}
    assert figures == {"fig-pass-rates", "fig-histograms", "fig-outcomes", "fig-indicators"}
    # the filter ran: exactly the documents one of whose attempts failed `knowledge` are visible
    shown = [a for a in page.articles if "hidden" not in a]
    assert shown and len(shown) < 10
    assert all("knowledge" in a["data-failed"].split() for a in shown)
    assert all("knowledge" not in a["data-failed"].split() for a in page.articles if "hidden" in a)
    # raw and rewrite side by side, right to left, for every attempt shown; the markup stayed text
    attempts = {rows[0]["id"]: len(rows) for rows in per_doc}
    assert page.rtl == 2 * sum(attempts[a["data-id"]] for a in page.articles)
    assert not page.injected and "pwned" not in dom.split("</title>")[0]
    text = out.read_text(encoding="utf-8")
    assert html.escape(XSS) in text
    # self-contained: nothing is fetched from anywhere
    assert all(link.startswith("data:") for link in re.findall(r'\b(?:src|href)="([^"]*)"', text))

    shot = tmp_path / "review.png"
    run_chromium(chromium, out.as_uri() + "#filter=passed", tmp_path, f"--screenshot={shot}",
                 "--window-size=1280,1600")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
