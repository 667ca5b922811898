"""The openai backend against a real OpenAI-compatible server (`transformers serve`, a tiny random
model saved to a temp directory), with faults: 5xx answers, slow answers, a server killed mid-run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from native_megatron.alignment.backends import BackendUnavailable
from native_megatron.alignment.pipeline import AlignedPreprocessConfig, run_preprocess_aligned
from native_megatron.alignment.tiny_model import make_tiny_chat_model
from native_megatron.utils.config import load_config
from tests.helpers.paths import same_bytes
from tests.helpers.servers import FaultProxy, RecordingServer, ServedModel

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
GUIDELINES = ROOT / "examples" / "guidelines" / "native_alignment_en.yaml"
N_DOCS = 16


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, sample_corpus):
    texts = [json.loads(line)["text"] for line in open(sample_corpus, encoding="utf-8")]
    return str(make_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model", texts, vocab_size=600))


@pytest.fixture(scope="module")
def server(tiny_model):
    served = ServedModel(tiny_model).start()
    yield served
    served.stop()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, sample_corpus):
    path = tmp_path_factory.mktemp("in") / "docs.jsonl"
    lines = [line for line in open(sample_corpus, encoding="utf-8")][:N_DOCS]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def cfg(inputs, prefix, tokenizer, model, urls, *overrides):
    base = {"input.paths": [str(inputs)], "output.prefix": str(prefix), "tokenize.tokenizer": str(tokenizer),
            "run.workers": 1, "run.progress": False, "rewrite.backend": "openai", "rewrite.model": model,
            "rewrite.guidelines": str(GUIDELINES), "rewrite.openai.base_urls": urls,
            # A window of one shard: a server lost mid-run leaves the shards before it finished.
            "rewrite.openai.window": 4, "rewrite.openai.backoff_s": 0.05, "rewrite.openai.timeout_s": 60,
            "rewrite.sampling.temperature": 0.0, "rewrite.sampling.max_new_tokens": 12,
            "rewrite.on_failure": "keep_raw", "output.shard_size": 4, "rewrite.batch_size": 4,
            # A tiny random model: every rewrite fails validation, which is what these tests count.
            "rewrite.min_rewritten_fraction": 0}
    return load_config(AlignedPreprocessConfig, overrides=list(overrides), base=base)


def statuses(prefix):
    rows = [json.loads(line) for line in open(f"{prefix}_manifest.jsonl", encoding="utf-8")]
    return rows


def test_rewrites_through_a_real_server_and_accounts_for_every_document(tmp_path, server, inputs, tiny_model,
                                                                          sample_tokenizer, caplog):
    prefix = tmp_path / "a"
    caplog.set_level(logging.INFO, logger="native_megatron.alignment.progress")
    stats = run_preprocess_aligned(cfg(inputs, prefix, sample_tokenizer, tiny_model, [server.url],
                                       "--run.progress=true", "--rewrite.progress_interval_s=0.3"))
    # Progress per document, not per batch: a line at the first answer, then lines that move.
    lines = [r.getMessage() for r in caplog.records if r.name == "native_megatron.alignment.progress"]
    assert lines and "in flight" in lines[0] and "ETA" in lines[0]
    done = [int(line.split()[1].split("/")[0]) for line in lines]
    # The first line comes with the first answers: the documents of one window (4) may finish together.
    assert 1 <= done[0] <= 4
    assert len(set(done)) >= 3 and done == sorted(done)
    rows = statuses(prefix)
    assert sorted(r["line"] for r in rows) == list(range(1, N_DOCS + 1))
    sent = [r for r in rows if r.get("backend") == "openai"]      # the documents that reached the rewriter
    assert len(sent) == stats["rewrite"]["documents"] > 0
    assert all(r["model"] == tiny_model and r["guidelines"].startswith("native-alignment@") for r in sent)
    # A random 2-layer model writes noise: the validators must reject it and keep the raw text.
    assert {r["status"] for r in sent} == {"kept_raw"}
    assert stats["rewrite"]["completion_tokens"] > 0 and stats["rewrite"]["failed_checks"]


def test_5xx_and_slow_answers_are_retried_and_change_nothing(tmp_path, server, inputs, tiny_model,
                                                             sample_tokenizer):
    ref = tmp_path / "ref"
    run_preprocess_aligned(cfg(inputs, ref, sample_tokenizer, tiny_model, [server.url]))
    with FaultProxy(server.url, fail_every=3, slow_every=4, delay=1.5) as proxy:
        prefix = tmp_path / "faulty"
        # Two base URLs (both the proxy): round-robin, and a timeout shorter than the slow answers.
        run_preprocess_aligned(cfg(inputs, prefix, sample_tokenizer, tiny_model, [proxy.url, proxy.url],
                                   "--rewrite.openai.timeout_s=1.0", "--rewrite.openai.max_retries=8"))
        assert proxy.failed > 0 and proxy.slowed > 0
    for suffix in ("_text_document.bin", "_manifest.jsonl"):
        assert same_bytes(f"{ref}{suffix}", f"{prefix}{suffix}"), suffix


def test_server_killed_mid_run_then_rerun_finishes_with_every_document_once(tmp_path, tiny_model, inputs,
                                                                              sample_tokenizer, server):
    ref = tmp_path / "ref"
    run_preprocess_aligned(cfg(inputs, ref, sample_tokenizer, tiny_model, [server.url]))
    doomed = ServedModel(tiny_model).start()

    def kill_after(n):
        # Streaming sends request k + 4 when one of the first k has come back (a window of 4): the 10th
        # arrives after 6 answers, when shard 0 (documents 1-4) is done and shard 1 is not.
        if n == 10:
            doomed.stop()

    prefix = tmp_path / "killed"
    try:
        with FaultProxy(doomed.url, on_request=kill_after) as proxy:
            with pytest.raises(BackendUnavailable):
                run_preprocess_aligned(cfg(inputs, prefix, sample_tokenizer, tiny_model, [proxy.url],
                                           "--rewrite.openai.max_retries=2"))
    finally:
        doomed.stop()
    work = Path(f"{prefix}_work") / "rewrite"
    finished = list(work.glob("*.done.json"))
    assert 0 < len(finished) < N_DOCS // 4
    # The server is back (here: the module's server); the rerun redoes only the unfinished shards.
    run_preprocess_aligned(cfg(inputs, prefix, sample_tokenizer, tiny_model, [server.url]))
    rows = statuses(prefix)
    assert sorted(r["line"] for r in rows) == list(range(1, N_DOCS + 1))
    for suffix in ("_text_document.bin", "_text_document.idx", "_manifest.jsonl"):
        assert same_bytes(f"{ref}{suffix}", f"{prefix}{suffix}"), suffix


def test_api_key_comes_from_the_environment_only(monkeypatch, tiny_model):
    from native_megatron.alignment.backends.openai_http import OpenAIBackend
    from native_megatron.alignment.config import OpenAIConfig, RewriteConfig

    monkeypatch.setenv("MY_KEY", "secret-token")
    backend = OpenAIBackend(RewriteConfig(backend="openai", model="m", tokenizer=tiny_model,
                                          openai=OpenAIConfig(api_key_env="MY_KEY")))
    assert backend.client.headers["Authorization"] == "Bearer secret-token"
    backend.close()
    monkeypatch.delenv("MY_KEY")
    backend = OpenAIBackend(RewriteConfig(backend="openai", model="m", tokenizer=tiny_model,
                                          openai=OpenAIConfig(api_key_env="MY_KEY")))
    assert "Authorization" not in backend.client.headers
    backend.close()


def backend_for(url):
    from native_megatron.alignment.backends.openai_http import OpenAIBackend
    from native_megatron.alignment.config import OpenAIConfig, RewriteConfig

    return OpenAIBackend(RewriteConfig(backend="openai", model="m", openai=OpenAIConfig(
        base_urls=[url], api_key_env="MY_KEY", max_retries=0)))


def ask(backend):
    from native_megatron.alignment.config import SamplingConfig

    try:
        return backend.generate([[{"role": "user", "content": "hi"}]], SamplingConfig())
    finally:
        backend.close()


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("other", ["port", "host"])
def test_a_redirect_to_another_origin_is_refused_and_never_gets_the_key(monkeypatch, code, other):
    from native_megatron.utils.config import ConfigError

    monkeypatch.setenv("MY_KEY", "secret-token")
    with RecordingServer() as elsewhere:
        # Another port on the same address, or the same port under another name: both are other origins.
        with RecordingServer(redirect=(code, elsewhere.url if other == "port" else None)) as configured:
            with pytest.raises(ConfigError, match="redirect") as err:
                ask(backend_for(configured.url))
    assert "secret-token" not in str(err.value) and "\n" not in str(err.value)
    assert elsewhere.headers == [] and configured.headers == []


def test_without_a_redirect_the_key_goes_to_the_configured_server(monkeypatch):
    monkeypatch.setenv("MY_KEY", "secret-token")
    with RecordingServer() as server:
        gen = ask(backend_for(server.url))
    assert gen[0].text == "ok" and server.headers[0]["Authorization"] == "Bearer secret-token"
