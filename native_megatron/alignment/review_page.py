"""The review page: one self-contained HTML file (figures as data URIs, plain JS filters, no server).

Every piece of document text is escaped before it reaches the page, and a Content-Security-Policy
allows only this module's own script (by hash) and embedded images: the documents are arbitrary web
text, and a page that ran their markup would let any crawled site script the reviewer's browser.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import html
import io
import os
import re
from pathlib import Path

from native_megatron.alignment.review import HISTOGRAMS, PASSED, Document, Review
from native_megatron.data.readers import InputError
from native_megatron.utils.io import atomic_write_text

_TOKEN = re.compile(r"\S+\s*|\s+")
MAX_DIFF_WORDS = 5000  # about 0.2 s a document; web pages of 100,000 words would take minutes

STYLE = """
body{font-family:sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
figure{display:inline-block;margin:.5em;vertical-align:top}img{max-width:100%}
.doc{border:1px solid #bbb;border-radius:4px;margin:1em 0;padding:.5em}
.doc header{font-weight:bold}.accepted{color:#176d17}.rejected{color:#a31515}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1em}
.text{white-space:pre-wrap;font-size:1.05em;line-height:1.6;background:#fafafa;padding:.4em;max-height:30em;overflow:auto}
ins{background:#c8f0c8;text-decoration:none}del{background:#f6c6c6}
.failed{background:#f6c6c6}.nodiff{color:#888}.tables{display:flex;gap:2em;align-items:flex-start}.meta{color:#555;font-size:.9em}
"""

SCRIPT = """
(function () {
  var sel = document.getElementById("filter"), docs = document.querySelectorAll("article.doc");
  function matches(d, v) {
    if (v === "all") return true;
    if (v === "passed") return d.getAttribute("data-passed") === "1";
    var failed = (d.getAttribute("data-failed") || "").split(" ");
    return v.indexOf("rejected:") === 0 && failed.indexOf(v.slice(9)) >= 0;
  }
  function apply() {
    var m = /filter=([^&]*)/.exec(location.hash), v = m ? decodeURIComponent(m[1]) : sel.value;
    if (!Array.prototype.some.call(sel.options, function (o) { return o.value === v; })) v = "all";
    sel.value = v;
    var n = 0;
    Array.prototype.forEach.call(docs, function (d) { var show = matches(d, v); d.hidden = !show; n += show; });
    document.getElementById("shown").textContent = n + " of " + docs.length + " shown";
    document.body.setAttribute("data-filter", v);
  }
  sel.addEventListener("change", function () { location.hash = "filter=" + encodeURIComponent(sel.value); });
  window.addEventListener("hashchange", apply);
  apply();
})();
"""


def _csp() -> str:
    digest = lambda text: base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()  # noqa: E731
    return (f"default-src 'none'; img-src data:; style-src 'sha256-{digest(STYLE)}'; "
            f"script-src 'sha256-{digest(SCRIPT)}'")


def word_diff(source: str, rewrite: str, max_words: int = MAX_DIFF_WORDS) -> tuple[str, str]:
    """Escaped HTML of both texts, words the rewrite removed in <del> and words it added in <ins>.
    Only the first ``max_words`` words of each are compared (the diff's cost grows with their product);
    the rest follows unmarked."""
    a, b = _TOKEN.findall(source), _TOKEN.findall(rewrite)
    matcher = difflib.SequenceMatcher(None, [t.strip() for t in a[:max_words]], [t.strip() for t in b[:max_words]],
                                      autojunk=False)
    left, right = [], []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        old, new = html.escape("".join(a[i1:i2])), html.escape("".join(b[j1:j2]))
        left.append(old if op == "equal" else f"<del>{old}</del>" if old else "")
        right.append(new if op == "equal" else f"<ins>{new}</ins>" if new else "")
    for side, rest in ((left, a[max_words:]), (right, b[max_words:])):
        if rest:
            side.append(f"<span class=\"nodiff\">[not compared past {max_words:,} words] </span>"
                        + html.escape("".join(rest)))
    return "".join(left), "".join(right)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return " .. ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return "-" if value is None else str(value)


def _attempt_html(doc: Document, a: dict) -> str:
    e = html.escape
    failed = a.get("failed_checks") or []
    checks = a.get("checks") or {}
    # One column per check, failed ones marked: the row reads across like the validator's verdict.
    cls = {name: " class=\"failed\"" if not c.get("passed") else "" for name, c in checks.items()}
    head = "".join(f"<th{cls[n]}>{e(n)}</th>" for n in checks)
    values = "".join(f"<td{cls[n]}>{e(_fmt(c.get('value')))}</td>" for n, c in checks.items())
    limits = "".join(f"<td{cls[n]}>{e(_fmt(c.get('threshold')))}</td>" for n, c in checks.items())
    rows = f"<tr><th>check</th>{head}</tr><tr><th>value</th>{values}</tr><tr><th>threshold</th>{limits}</tr>"
    left, right = word_diff(doc.source, a.get("text") or "")
    finish = ", ".join(str(r) for r in a.get("finish_reasons") or [])
    return (f"<div class=\"attempt\"><h3>attempt {e(str(a.get('attempt', 1)))}: "
            f"<span class=\"{'accepted' if not failed else 'rejected'}\">{e(str(a.get('decision', '?')))}</span>"
            f"{' (failed: ' + e(', '.join(failed)) + ')' if failed else ''}</h3>"
            f"<p class=\"meta\">{e(str(a.get('chunks', '?')))} chunk(s), finish: {e(finish)}, "
            f"tokens {e(str(a.get('prompt_tokens', '?')))} in / {e(str(a.get('completion_tokens', '?')))} out</p>"
            f"<table class=\"checks\">{rows}</table>"
            f"<div class=\"pair\"><div><b>raw</b><div class=\"text raw\" dir=\"rtl\" lang=\"ar\">{left}</div></div>"
            f"<div><b>rewrite</b><div class=\"text rewrite\" dir=\"rtl\" lang=\"ar\">{right}</div></div></div></div>")


def _doc_html(n: int, doc: Document) -> str:
    e = html.escape
    first = doc.attempts[0]
    meta = f"{first.get('backend', '?')} {first.get('model', '?')} ({first.get('guidelines', '?')})"
    return (f"<article class=\"doc\" id=\"doc-{n}\" data-id=\"{e(doc.id)}\" "
            f"data-failed=\"{e(' '.join(doc.failed_any))}\" data-passed=\"{int(not doc.failed_checks)}\" "
            f"data-status=\"{e(doc.status)}\">"
            f"<header>{e(doc.id)} <span class=\"meta\">{e(doc.file)}:{doc.line}, {e(meta)}</span>: "
            f"<span class=\"{'accepted' if not doc.failed_checks else 'rejected'}\">{e(doc.status)}</span></header>"
            + "".join(_attempt_html(doc, a) for a in doc.attempts) + "</article>")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _thresholds(t) -> list[float]:
    if isinstance(t, bool) or t is None:
        return []
    if isinstance(t, (int, float)):
        return [float(t)]
    if isinstance(t, dict):
        t = list(t.values())
    return [float(v) for v in t if isinstance(v, (int, float)) and not isinstance(v, bool)]


def pyplot():
    """matplotlib's pyplot, drawing to files; a missing matplotlib is one line, asked before any work."""
    try:
        import matplotlib
    except ImportError:
        raise InputError("the review page draws its figures with matplotlib: "
                         "pip install 'native_megatron[review]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _pass_rates(ax, review: Review) -> None:
    rates = review.pass_counts
    names = list(rates)
    for k, attempt in enumerate((1, 2)):
        ys = [i + (k - 0.5) * 0.4 for i in range(len(names))]
        xs = [100 * rates[n][attempt][0] / rates[n][attempt][1] if attempt in rates[n] else 0 for n in names]
        ax.barh(ys, xs, 0.4, label="first attempt" if attempt == 1 else "retry")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()  # the validator's order, top down
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of attempts that pass")
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize="small")  # above, off the bars


def _histograms(axes, review: Review) -> None:
    for ax, name, label in zip(axes, HISTOGRAMS, ("rewrite / source length", "share of source content words kept")):
        values = review.values.get(name, [])
        if len(values):
            ax.hist(values, bins=30, color="#4c72b0")
        else:
            ax.text(0.5, 0.5, "no values", ha="center", transform=ax.transAxes)
        for t in _thresholds(review.thresholds.get(name)):
            ax.axvline(t, color="red", linestyle="--", linewidth=1)
        ax.set_title(f"{name} (red: threshold)", fontsize="medium")
        ax.set_xlabel(label)
        ax.set_ylabel("attempts")


def _outcomes(axes, review: Review) -> None:
    for ax, counts, title in ((axes[0], review.statuses or review.decisions, "documents by final status"),
                              (axes[1], review.drop_reasons, "drop reasons")):
        labels = list(counts)
        ax.barh(range(len(labels)), [counts[k] for k in labels], color="#dd8452")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_title(title, fontsize="medium")
        if not labels:
            ax.text(0.5, 0.5, "none", ha="center", transform=ax.transAxes)


def _indicators(axes, review: Review) -> None:
    ba = review.before_after()
    for ax, keys, unit in ((axes[0], [k for k in ba if k.endswith("%")], "% of characters"),
                           (axes[1], [k for k in ba if k.endswith("words")], "per 1,000 words")):
        for k, which in enumerate(("source", "rewrite")):
            ax.barh([i + (k - 0.5) * 0.4 for i in range(len(keys))], [ba[key][k] for key in keys], 0.4, label=which)
        ax.set_yticks(range(len(keys)), [key.rsplit(" ", 1 if unit.startswith("%") else 2)[0] for key in keys])
        ax.set_xlabel(unit)
        ax.legend(fontsize="small")


# id -> (caption, draw(axes, review), number of panels, figure size in inches)
FIGURES = {
    "fig-pass-rates": ("Pass rate per check, first attempts and retries", _pass_rates, 1, (5.5, 4.0)),
    "fig-histograms": ("Length ratio and kept knowledge over all attempts", _histograms, 2, (7.5, 2.8)),
    "fig-outcomes": ("Final status and drop reasons (from the manifest)", _outcomes, 2, (7.5, 2.8)),
    "fig-indicators": ("Script and dialect indicators, sources vs rewrites", _indicators, 2, (7.5, 2.8)),
}


def figures(review: Review) -> dict[str, tuple[str, str]]:
    """id -> (caption, PNG data URI) for the summary figures."""
    plt = pyplot()
    out = {}
    for fid, (caption, draw, panels, size) in FIGURES.items():
        fig, axes = plt.subplots(1, panels, figsize=size)
        draw(axes, review)
        fig.tight_layout()
        out[fid] = (caption, _png(fig))
        plt.close(fig)
    return out


def _summary_html(review: Review) -> str:
    e = html.escape
    r = review
    rows = [("documents with attempts", r.documents), ("attempts", r.attempts),
            ("accepted on the first attempt", r.first_pass), ("accepted on the retry", r.retry_pass),
            ("rejected in the end", r.documents - r.first_pass - r.retry_pass), ("shown below", len(r.sample))]
    rows += [(f"manifest: {k}", v) for k, v in r.statuses.items()]
    if r.statuses and r.rewrite_rows != r.documents:
        # every document the rewriter saw has attempt rows; a gap is a job older than them, or damage
        rows.append(("manifest rows of the rewrite stage (differs from the documents with attempts!)",
                     r.rewrite_rows))
    if r.skipped_cut_lines:
        rows.append(("rows cut mid-write (in-flight shards), skipped", r.skipped_cut_lines))
    ba = review.before_after()
    indicator_rows = "".join(f"<tr><td>{e(k)}</td><td>{v[0]:.2f}</td><td>{v[1]:.2f}</td></tr>" for k, v in ba.items())
    count_rows = "".join(f"<tr><td>{e(k)}</td><td>{v}</td></tr>" for k, v in rows)
    return (f"<div class=\"tables\"><table id=\"counts\">{count_rows}</table>"
            "<table id=\"indicators\"><tr><th>indicator</th><th>sources</th><th>rewrites</th></tr>"
            + indicator_rows + "</table></div>")


def render(review: Review) -> str:
    """The page's HTML."""
    e, sample = html.escape, review.sample
    figs = "".join(f"<figure><img id=\"{fid}\" alt=\"{e(cap)}\" src=\"{uri}\"><figcaption>{e(cap)}</figcaption>"
                   f"</figure>" for fid, (cap, uri) in figures(review).items())
    counts = {name: sum(1 for d in sample if name in d.failed_any) for name in review.check_names()}
    options = [("all", f"all ({len(sample)})"), (PASSED, f"passed ({sum(not d.failed_checks for d in sample)})")]
    options += [(f"rejected:{n}", f"rejected by {n} ({c})") for n, c in counts.items() if c]
    select = "".join(f"<option value=\"{e(v)}\">{e(label)}</option>" for v, label in options)
    state = "a RUNNING job (work files)" if review.running else "a finished job"
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_csp()}\">"
            f"<title>Rewrite review: {e(review.prefix)}</title><style>{STYLE}</style></head><body>"
            f"<h1>Rewrite review: {e(review.prefix)}</h1><p class=\"meta\">Read from {state}: "
            f"{e(', '.join(review.sources))}</p><h2>Summary</h2>{_summary_html(review)}"
            f"<div id=\"figures\">{figs}</div><h2>Documents</h2>"
            f"<p><label>Show <select id=\"filter\">{select}</select></label> <span id=\"shown\"></span></p>"
            f"<p class=\"meta\">Left the raw text, words the rewrite removed struck out; right the rewrite, words "
            f"it added highlighted. \"rejected by X\" shows every document one of whose attempts failed X.</p>"
            + "".join(_doc_html(i, d) for i, d in enumerate(sample))
            + f"<script>{SCRIPT}</script></body></html>")


def write_page(review: Review, out: str | Path) -> None:
    """Write the page for ``review`` to ``out``, readable as the umask allows (a page to share)."""
    atomic_write_text(out, render(review))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out, 0o666 & ~umask)
