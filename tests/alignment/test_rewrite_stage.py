"""The rewrite stage end to end (prepare -> rewrite -> validate -> tokenize) with a deterministic
in-process backend: failure policies, chunking, resumption after a dead backend, work split by rank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from native_megatron.alignment.backends import BackendUnavailable
from native_megatron.alignment.pipeline import AlignedPreprocessConfig, run_preprocess_aligned
from native_megatron.alignment.rewrite import TooFewRewritten
from native_megatron.data.indexed import dataset_prefix
from native_megatron.data.tokenizer import load_tokenizer
from native_megatron.utils.config import ConfigError, load_config
from tests.helpers.fakes import PolishingBackend
from tests.helpers.paths import same_bytes
from tests.helpers.rewrite_corpus import BODY, marked_corpus

ROOT = Path(__file__).resolve().parents[2]
GUIDELINES = ROOT / "examples" / "guidelines" / "native_alignment_ar.yaml"


def cfg(inputs, prefix, tokenizer, *overrides):
    base = {"input.paths": [str(inputs)], "output.prefix": str(prefix), "tokenize.tokenizer": str(tokenizer),
            "run.workers": 1, "run.progress": False, "rewrite.backend": "hf", "rewrite.model": "fake",
            "rewrite.guidelines": str(GUIDELINES), "output.shard_size": 5, "rewrite.batch_size": 3,
            "dedup.near": False}
    return load_config(AlignedPreprocessConfig, overrides=list(overrides), base=base)


def manifest(prefix) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, open(f"{prefix}_manifest.jsonl", encoding="utf-8"))}


def read_texts(prefix, tokenizer):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    tok = load_tokenizer(tokenizer)
    ds = IndexedDataset(dataset_prefix(str(prefix)))
    return [tok.decode(ds[i][:-1].tolist()) for i in range(len(ds))]


def test_policies_statuses_and_what_reaches_the_dataset(tmp_path, sample_tokenizer):
    src = marked_corpus(tmp_path)
    prefix = tmp_path / "out" / "a"
    stats = run_preprocess_aligned(cfg(src, prefix, sample_tokenizer), backend=PolishingBackend())
    rows = manifest(prefix)
    assert len(rows) == 24 and stats["documents_in"] == 24
    assert rows["d00"]["status"] == "rewritten" and "retried" not in rows["d00"]
    assert rows["d11"]["status"] == "rewritten" and rows["d11"]["retried"]           # FLAKY: retry worked
    assert rows["d03"]["status"] == "kept_raw" and "refusal" in rows["d03"]["failed_checks"]
    assert rows["d07"]["status"] == "kept_raw" and "truncated" in rows["d07"]["failed_checks"]
    assert {r["backend"] for r in rows.values()} == {"fake"}
    assert all(r["guidelines"].startswith("native-alignment@1.0#") for r in rows.values())
    assert stats["rewrite"]["by_status"]["rewritten"] == 22
    assert stats["rewrite"]["rewritten_fraction"] == round(22 / 24, 4)
    assert stats["rewrite"]["failed_checks"]["refusal"] >= 1
    texts = read_texts(prefix, sample_tokenizer)
    assert len(texts) == 24
    assert "يا غبي" not in texts[0] and "!!!" not in texts[0]   # the polished text was tokenized
    assert "يا غبي" in texts[3]                                 # kept raw


@pytest.mark.parametrize("policy, d03, d11", [
    (["--rewrite.on_failure=drop"], "dropped", "dropped"),
    (["--rewrite.on_failure=keep_raw"], "kept_raw", "kept_raw"),
    (["--rewrite.on_failure=retry", "--rewrite.after_retry=drop"], "dropped", "rewritten"),
])
def test_failure_policies(tmp_path, sample_tokenizer, policy, d03, d11):
    prefix = tmp_path / "p"
    stats = run_preprocess_aligned(cfg(marked_corpus(tmp_path), prefix, sample_tokenizer, *policy),
                                   backend=PolishingBackend())
    rows = manifest(prefix)
    assert (rows["d03"]["status"], rows["d11"]["status"]) == (d03, d11)
    if d03 == "dropped":
        assert rows["d03"]["reason"] == "rewrite_failed_validation"
        assert stats["dropped_by_reason"]["rewrite_failed_validation"] >= 1
    assert sum(stats["documents_by_status"].values()) == 24


def test_a_retry_inherits_every_sampling_setting_not_set_for_it(tmp_path, sample_tokenizer):
    backend = PolishingBackend()
    run_preprocess_aligned(cfg(marked_corpus(tmp_path, 12), tmp_path / "r", sample_tokenizer,
                               "--rewrite.sampling.max_new_tokens=16", "--rewrite.sampling.temperature=0.5",
                               "--rewrite.retry_sampling.top_p=0.8"), backend=backend)
    tried = {(s.temperature, s.top_p, s.max_new_tokens, s.seed) for s in backend.samplings}
    # The user's token limit and temperature hold for the retry too; its own top_p wins; and its seed
    # moves on by one, so that the retry draws another sample instead of repeating the first.
    assert tried == {(0.5, 0.9, 16, 1234), (0.5, 0.8, 16, 1235)}


def test_a_retry_that_would_repeat_a_greedy_first_attempt_is_refused_at_load(tmp_path, sample_tokenizer):
    with pytest.raises(ConfigError, match="would repeat the first attempt"):
        cfg(marked_corpus(tmp_path, 1), tmp_path / "g", sample_tokenizer, "--rewrite.sampling.temperature=0")
    cfg(marked_corpus(tmp_path, 1), tmp_path / "g", sample_tokenizer, "--rewrite.sampling.temperature=0",
        "--rewrite.retry_sampling.temperature=0.7")


def test_too_few_rewritten_fails_before_tokenizing_and_a_lower_minimum_reuses_the_shards(tmp_path,
                                                                                         sample_tokenizer):
    src = tmp_path / "refused.jsonl"
    src.write_text("".join(json.dumps({"id": f"r{i}", "text": f"المقال رقم {i} {'ب' * (i + 1)}. {BODY}REFUSE"},
                                      ensure_ascii=False) + "\n" for i in range(6)), encoding="utf-8")
    prefix = tmp_path / "few"
    with pytest.raises(TooFewRewritten, match=r"rewritten: 0 of \d+ documents .*min_rewritten_fraction=0.5"):
        run_preprocess_aligned(cfg(src, prefix, sample_tokenizer), backend=PolishingBackend())
    assert not Path(dataset_prefix(str(prefix)) + ".bin").exists()
    backend = PolishingBackend()
    stats = run_preprocess_aligned(cfg(src, prefix, sample_tokenizer, "--rewrite.min_rewritten_fraction=0"),
                                   backend=backend)
    assert backend.requests == 0 and stats["rewrite"]["rewritten_fraction"] == 0.0
    assert stats["documents_written"] == stats["rewrite"]["documents"] > 0     # kept raw, all of them


def test_long_documents_are_chunked_and_joined_in_order(tmp_path, sample_tokenizer):
    long_text = "\n".join(f"الفقرة {i}: {BODY}يا غبي!!!" for i in range(12))
    src = tmp_path / "long.jsonl"
    src.write_text(json.dumps({"id": "long", "text": long_text}, ensure_ascii=False) + "\n", encoding="utf-8")
    prefix = tmp_path / "l"
    backend = PolishingBackend()
    # One paragraph twelve times: the repetition filters would drop it before it is rewritten.
    run_preprocess_aligned(cfg(src, prefix, sample_tokenizer, "--rewrite.max_input_tokens=60",
                               "--clean.quality.enabled=false"), backend=backend)
    row = manifest(prefix)["long"]
    assert row["status"] == "rewritten" and row["chunks"] > 3
    expected = "\n".join(f"الفقرة {i}: {BODY.strip()}!" for i in range(12))
    aligned = json.loads(open(tmp_path / "l_work" / "rewrite" / "shard-00000.jsonl", encoding="utf-8").readline())
    assert aligned["text"] == expected


def test_a_dead_backend_loses_nothing_and_the_rerun_equals_an_uninterrupted_run(tmp_path, sample_tokenizer):
    src = marked_corpus(tmp_path)
    ref = tmp_path / "ref"
    run_preprocess_aligned(cfg(src, ref, sample_tokenizer), backend=PolishingBackend())
    prefix = tmp_path / "cut"
    with pytest.raises(BackendUnavailable):
        run_preprocess_aligned(cfg(src, prefix, sample_tokenizer), backend=PolishingBackend(fail_after=3))
    work = tmp_path / "cut_work" / "rewrite"
    done = sorted(p.name for p in work.glob("*.done.json"))
    assert done and len(done) < 5                          # some shards finished, not all
    assert not any(p.name.endswith(".tmp") for p in work.iterdir() if p.name.startswith("shard"))
    backend = PolishingBackend()
    run_preprocess_aligned(cfg(src, prefix, sample_tokenizer), backend=backend)
    # Only the unfinished shards were sent again: 5 documents per finished shard were not.
    assert backend.requests <= 24 - 5 * len(done) + 3      # + the FLAKY/REFUSE/TRUNCATE retries
    for suffix in ("_text_document.bin", "_text_document.idx", "_manifest.jsonl"):
        assert same_bytes(f"{ref}{suffix}", f"{prefix}{suffix}"), suffix


def test_ranks_share_the_shards_and_tokenize_waits_for_all(tmp_path, sample_tokenizer):
    src = marked_corpus(tmp_path)
    ref = tmp_path / "ref"
    run_preprocess_aligned(cfg(src, ref, sample_tokenizer), backend=PolishingBackend())
    prefix = tmp_path / "split"
    run_preprocess_aligned(cfg(src, prefix, sample_tokenizer, "--run.stage=prepare"))
    out0 = run_preprocess_aligned(cfg(src, prefix, sample_tokenizer, "--run.stage=rewrite", "--rewrite.rank=0",
                                      "--rewrite.world_size=2"), backend=PolishingBackend())
    assert out0["rewrite"]["shards_done"] == 3 and out0["rewrite"]["shards_total"] == 5
    with pytest.raises(ConfigError, match="3 of 5 shards are finished"):
        run_preprocess_aligned(cfg(src, prefix, sample_tokenizer, "--run.stage=tokenize"), backend=PolishingBackend())
    run_preprocess_aligned(cfg(src, prefix, sample_tokenizer, "--run.stage=rewrite", "--rewrite.rank=1",
                               "--rewrite.world_size=2"), backend=PolishingBackend())
    run_preprocess_aligned(cfg(src, prefix, sample_tokenizer, "--run.stage=tokenize"), backend=PolishingBackend())
    for suffix in ("_text_document.bin", "_manifest.jsonl"):
        assert same_bytes(f"{ref}{suffix}", f"{prefix}{suffix}"), suffix


def test_three_prepare_tasks_give_the_rewritten_dataset_of_one(tmp_path, sample_tokenizer):
    src = marked_corpus(tmp_path)
    one, three = tmp_path / "one", tmp_path / "three"
    run_preprocess_aligned(cfg(src, one, sample_tokenizer, "--run.tasks=1"), backend=PolishingBackend())
    stats = run_preprocess_aligned(cfg(src, three, sample_tokenizer, "--run.tasks=3"), backend=PolishingBackend())
    assert stats["prepare_tasks"] == 3 and not stats["one_pass"]
    assert len(list((tmp_path / "three_work" / "prepare").glob("task-*/shard-*.jsonl"))) >= 6
    for suffix in ("_text_document.bin", "_text_document.idx", "_manifest.jsonl"):
        assert same_bytes(f"{one}{suffix}", f"{three}{suffix}"), suffix


def test_slurm_array_variables_pick_the_rank(monkeypatch):
    from native_megatron.alignment.config import RewriteConfig

    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "8")
    assert RewriteConfig().work_split() == (3, 8)
    assert RewriteConfig(rank=1, world_size=2).work_split() == (1, 2)


def test_changed_guidelines_redo_the_rewrites(tmp_path, sample_tokenizer):
    src = marked_corpus(tmp_path, 6)
    prefix = tmp_path / "g"
    run_preprocess_aligned(cfg(src, prefix, sample_tokenizer), backend=PolishingBackend())
    other = tmp_path / "other.yaml"
    other.write_text(GUIDELINES.read_text(encoding="utf-8").replace('version: "1.0"', 'version: "1.1"'),
                     encoding="utf-8")
    backend = PolishingBackend()
    run_preprocess_aligned(cfg(src, prefix, sample_tokenizer, f"--rewrite.guidelines={other}"), backend=backend)
    assert backend.requests >= 6
    assert all(r["guidelines"].startswith("native-alignment@1.1#") for r in manifest(prefix).values())


def test_the_summary_lists_the_rewrite_statuses_between_kept_and_dropped_and_its_line():
    from native_megatron.alignment.pipeline import RewriteStage
    from native_megatron.data.pipeline import format_summary

    stats = {"documents_in": 6, "documents_by_status": {"dropped": 1, "kept_raw": 2, "rewritten": 3},
             "dropped_by_reason": {"rewrite_failed_validation": 1}, "tokens_written": 10,
             "tokenizer": {"dtype": "uint16", "vocab_size": 8000}, "partitions": 1,
             "outputs": {"dataset": "d", "manifest": "m"},
             "rewrite": {"backend": "hf", "model": "fake", "guidelines": "g", "failed_checks": {"refusal": 3}},
             "timing": {"seconds_total": 2.5, "documents_per_second": 2.4, "tokens_per_second": 4.0,
                        "rewrite": {"generated_tokens_per_second": 1234.0}}}
    lines = format_summary(stats, RewriteStage).splitlines()
    assert lines[0] == "documents: 6 in, 3 rewritten, 2 kept raw, 1 dropped"
    assert lines[2] == "rewrite:   hf fake (g); failed checks: refusal 3; 1,234 generated tokens/s"
