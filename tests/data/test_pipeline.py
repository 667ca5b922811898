"""End to end: raw JSONL -> manifest + Megatron .bin/.idx, read back with megatron-core."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from native_megatron.data.cleaning import CleanConfig, Cleaner
from native_megatron.data.indexed import dataset_prefix
from native_megatron.data.pipeline import PreprocessConfig, run_preprocess
from native_megatron.data.readers import InputError, RecordSkip, iter_records, parse_record
from native_megatron.data.tokenizer import load_tokenizer
from native_megatron.utils.config import ConfigError, load_config
from tests.helpers.paths import same_bytes


def make_cfg(inputs, prefix, tokenizer, *overrides, workers=1):
    base = {"input.paths": [str(p) for p in inputs], "output.prefix": str(prefix),
            "tokenize.tokenizer": str(tokenizer), "run.workers": workers, "run.progress": False}
    return load_config(PreprocessConfig, overrides=list(overrides), base=base)


def read_dataset(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    return IndexedDataset(dataset_prefix(str(prefix)), mmap=True)


def manifest(prefix):
    with open(f"{prefix}_manifest.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def count_lines(path):
    with open(path, "rb") as f:
        return sum(1 for _ in f)


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory, sample_corpus, sample_tokenizer):
    prefix = tmp_path_factory.mktemp("sample") / "ar"
    stats = run_preprocess(make_cfg([sample_corpus], prefix, sample_tokenizer, "--output.shard_size=100",
                                    workers=2))
    return prefix, stats


def test_dataset_holds_exactly_the_tokenizer_ids_of_each_kept_document(sample_run, sample_corpus,
                                                                       sample_tokenizer):
    prefix, stats = sample_run
    tok = load_tokenizer(sample_tokenizer)
    cleaner = Cleaner(CleanConfig())
    texts = {}
    for rec in iter_records([str(sample_corpus)], "text", "id"):
        try:
            doc_id, raw = parse_record(rec, "text", "id", sample_corpus.name)
        except RecordSkip:
            continue
        texts[rec.line] = cleaner.process(raw).text      # cleaned, filtered, PII redacted
    rows = manifest(prefix)
    kept = [r for r in rows if r["status"] == "kept"]
    ds = read_dataset(prefix)
    assert len(ds) == len(kept) == stats["documents_written"] > 300 * 0.8
    assert ds.index.dtype == np.uint16
    for i, row in enumerate(kept):
        expected = tok.encode(texts[row["line"]]) + [tok.eod_id]
        assert ds[i].tolist() == expected, row["id"]
        assert row["tokens"] == len(expected)
    assert sum(r["tokens"] for r in kept) == stats["tokens_written"] == ds.sequence_lengths.sum()
    # The largest id is recorded, so the trainer checks it against the model without scanning the .bin.
    assert stats["max_token_id"] == max(int(ds[i].max()) for i in range(len(ds))) < tok.vocab_size
    # Megatron documents: one sequence each.
    assert ds.document_indices.tolist() == list(range(len(kept) + 1))


def test_manifest_accounts_for_every_input_line(sample_run, sample_corpus):
    prefix, stats = sample_run
    rows = manifest(prefix)
    assert len(rows) == count_lines(sample_corpus) == stats["documents_in"]
    assert [r["line"] for r in rows] == list(range(1, len(rows) + 1))
    assert {r["status"] for r in rows} == {"kept", "dropped"}
    dropped = [r for r in rows if r["status"] == "dropped"]
    assert all(r["reason"] for r in dropped)
    assert sum(stats["dropped_by_reason"].values()) == len(dropped)
    assert stats["documents_by_status"] == {"dropped": len(dropped), "kept": len(rows) - len(dropped)}


def test_sample_has_real_work_for_every_filter(sample_run):
    prefix, stats = sample_run
    reasons = stats["dropped_by_reason"]
    for reason in ("exact_duplicate", "near_duplicate", "too_short", "low_arabic_ratio"):
        assert reasons.get(reason, 0) > 0, reason
    rows = {r["id"]: r for r in manifest(prefix)}
    for r in rows.values():
        if r.get("reason") in ("exact_duplicate", "near_duplicate"):
            assert rows[r["duplicate_of"]]["status"] == "kept"
    steps = stats["cleaning_steps"]
    # Tatweel removal is on by default and counted as itself; every normalize_* switch is off.
    assert "normalize_letters" not in steps
    for step in ("fix_mojibake", "strip_html", "remove_control", "remove_tatweel", "normalize_whitespace",
                 "boilerplate:copyright", "boilerplate:share", "boilerplate:cookies", "remove_symbol_lines"):
        assert steps.get(step, 0) > 0, step
    assert stats["pii_redacted"].get("phone", 0) > 0 and stats["languages"]["ar"] > 300


# Kept by the sample before language ID, the quality filters and PII redaction.
KEPT_BEFORE = 321
OLD_REASONS = {"exact_duplicate", "near_duplicate", "too_short", "low_arabic_ratio", "too_long"}


def test_sample_keeps_95_percent_of_what_it_kept_before_the_new_filters(sample_run):
    prefix, stats = sample_run
    new = {k: v for k, v in stats["dropped_by_reason"].items() if k not in OLD_REASONS}
    assert stats["documents_by_status"]["kept"] >= 0.95 * KEPT_BEFORE, f"new filters drop too much: {new}"
    rows = manifest(prefix)
    # Every document that reached language identification carries its language in the manifest.
    assert all(r["language"] == "ar" for r in rows if r["status"] == "kept")
    assert all(r.get("detail") for r in rows if r.get("reason") in new)


def test_outputs_do_not_depend_on_workers_or_shards_and_reruns_are_byte_identical(
        tmp_path, sample_run, sample_corpus, sample_tokenizer):
    ref, _ = sample_run
    one = tmp_path / "one"
    run_preprocess(make_cfg([sample_corpus], one, sample_tokenizer, workers=1))
    again = tmp_path / "again"
    stats = run_preprocess(make_cfg([sample_corpus], again, sample_tokenizer, "--output.shard_size=100",
                                    workers=2))
    for prefix in (one, again):
        for suffix in ("_text_document.bin", "_text_document.idx", "_manifest.jsonl"):
            assert same_bytes(f"{ref}{suffix}", f"{prefix}{suffix}"), (prefix, suffix)
    ref_stats = json.loads(open(f"{ref}_stats.json").read())
    for key in ("documents_by_status", "dropped_by_reason", "cleaning_steps", "tokens_written"):
        assert stats[key] == ref_stats[key]


def test_rerun_reuses_finished_work_and_redoes_a_lost_task(tmp_path, sample_corpus, sample_tokenizer):
    prefix = tmp_path / "r"
    cfg = make_cfg([sample_corpus], prefix, sample_tokenizer, "--run.tasks=3", workers=2)
    first = run_preprocess(cfg)
    assert first["prepare_tasks"] == 3 and first["partitions"] == 3
    bin_bytes = open(f"{prefix}_text_document.bin", "rb").read()
    # As if the job had been killed before task 1 finished: its filter step, then its clean step too.
    os.unlink(f"{prefix}_work/prepare/task-00001/filter.json")
    second = run_preprocess(cfg)
    assert second["timing"]["prepare_reused"] == {"clean": 3, "merge": 15, "clusters": 1, "filter": 2}
    assert open(f"{prefix}_text_document.bin", "rb").read() == bin_bytes
    os.unlink(f"{prefix}_work/prepare/task-00001/clean.json")
    third = run_preprocess(cfg)
    assert third["timing"]["prepare_reused"]["clean"] == 2
    assert open(f"{prefix}_text_document.bin", "rb").read() == bin_bytes
    assert same_bytes(f"{prefix}_manifest.jsonl", f"{prefix}_manifest.jsonl")


def test_changed_settings_on_the_same_prefix_are_refused_unless_overwrite(tmp_path, sample_corpus,
                                                                          sample_tokenizer):
    prefix = tmp_path / "c"
    run_preprocess(make_cfg([sample_corpus], prefix, sample_tokenizer))
    with pytest.raises(ConfigError, match="other inputs or settings"):
        run_preprocess(make_cfg([sample_corpus], prefix, sample_tokenizer, "--clean.min_chars=300"))
    stats = run_preprocess(make_cfg([sample_corpus], prefix, sample_tokenizer, "--clean.min_chars=300",
                                    "--output.overwrite=true"))
    assert stats["timing"]["prepare_reused"]["clean"] == 0


def test_stages_run_separately(tmp_path, sample_corpus, sample_tokenizer, sample_run):
    ref, _ = sample_run
    prefix = tmp_path / "s"
    with pytest.raises(ConfigError, match="no prepare plan"):
        run_preprocess(make_cfg([sample_corpus], prefix, sample_tokenizer, "--run.stage=tokenize"))
    out = run_preprocess(make_cfg([sample_corpus], prefix, sample_tokenizer, "--run.stage=prepare"))
    assert out["prepare"]["documents_in"] == count_lines(sample_corpus)
    assert not os.path.exists(f"{prefix}_text_document.bin")
    run_preprocess(make_cfg([], prefix, sample_tokenizer, "--run.stage=tokenize"))
    assert same_bytes(f"{ref}_text_document.bin", f"{prefix}_text_document.bin")
    assert same_bytes(f"{ref}_manifest.jsonl", f"{prefix}_manifest.jsonl")


def test_bad_inputs_are_counted_skips_and_nothing_is_lost(tmp_path, sample_tokenizer):
    good = ("هذه وثيقة عربية سليمة تماما تتحدث عن تاريخ مدينة بغداد ومكتبتها الكبيرة "
            "التي جمعت العلماء والمترجمين من كل مكان في العصر العباسي الذهبي.")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"".join([
        b"\xef\xbb\xbf" + json.dumps({"id": "good", "text": good}, ensure_ascii=False).encode() + b"\n",
        b'{"id": "broken", "text": \n',
        b'{"id": "bytes", "text": "\xff\xfe"}\n',
        b'{"id": "nokey", "body": "x"}\n',
        b'{"id": "empty", "text": ""}\n',
        json.dumps({"id": "huge", "text": "ب " * 5_000_000}).encode() + b"\n",
        b"\n",
        json.dumps({"id": "english", "text": "This is an English page " * 10}).encode() + b"\n",
        b'{"id": "lone", "text": "\\ud800 ' + good.encode() + b'"}\n',
        b'{"id": "\\udc80", "text": "' + good.encode() + b' 2"}\n',
        b'{"id": "null", "text": null}\n',
    ]))
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    prefix = tmp_path / "out" / "b"
    stats = run_preprocess(make_cfg([bad, empty], prefix, sample_tokenizer))
    rows = manifest(prefix)
    assert [(r["line"], r["status"], r.get("reason")) for r in rows] == [
        (1, "kept", None), (2, "dropped", "invalid_json"), (3, "dropped", "invalid_utf8"),
        (4, "dropped", "missing_text_key"), (5, "dropped", "empty_text"), (6, "dropped", "too_long"),
        (7, "dropped", "blank_line"), (8, "dropped", "low_arabic_ratio"), (9, "dropped", "invalid_utf8"),
        (10, "dropped", "invalid_utf8"), (11, "dropped", "null_text")]
    assert all(r["file"] == str(bad) for r in rows)
    assert stats["empty_files"] == [str(empty)]
    assert stats["dropped_by_reason"]["invalid_utf8"] == 3 and stats["dropped_by_reason"]["null_text"] == 1
    assert len(read_dataset(prefix)) == 1


def test_a_text_key_no_line_has_stops_before_any_work_and_lists_the_keys_seen(tmp_path, sample_corpus,
                                                                              sample_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    prefix = tmp_path / "out" / "k"
    with pytest.raises(InputError, match=r"'body' \(keys seen: id, source, text, url\)"):
        run_preprocess(make_cfg([sample_corpus], prefix, sample_tokenizer, "--input.text_key=body"))
    pq.write_table(pa.table({"id": ["a"], "content": ["نص"]}), tmp_path / "p.parquet")
    with pytest.raises(InputError, match=r"p.parquet has no column 'text' \(columns: content, id\)"):
        run_preprocess(make_cfg([sample_corpus, tmp_path / "p.parquet"], prefix, sample_tokenizer))
    assert not (tmp_path / "out").exists()


def test_a_file_with_no_json_object_in_its_first_lines_is_not_refused(tmp_path, sample_corpus,
                                                                      sample_tokenizer):
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b"not json\n" * 3 + b"[1]\n")
    # No object to go on: the lines are counted skips, not a --text-key mistake.
    stats = run_preprocess(make_cfg([broken, sample_corpus], tmp_path / "b", sample_tokenizer))
    assert [r["reason"] for r in manifest(tmp_path / "b")[:4]] == ["invalid_json"] * 3 + ["not_an_object"]
    assert stats["documents_written"] > 0


def test_a_run_that_keeps_no_document_fails_and_writes_no_dataset(tmp_path, sample_corpus, sample_tokenizer):
    prefix = tmp_path / "z"
    # A dataset of an earlier run on this prefix must not survive as if it were this run's.
    run_preprocess(make_cfg([sample_corpus], prefix, sample_tokenizer))
    with pytest.raises(InputError, match=r"no document kept: \d+ in, dropped: .*too_short \d+"):
        run_preprocess(make_cfg([sample_corpus], prefix, sample_tokenizer, "--clean.min_chars=900000",
                                "--output.overwrite=true"))
    assert not os.path.exists(f"{dataset_prefix(str(prefix))}.bin")
    assert not os.path.exists(f"{dataset_prefix(str(prefix))}.idx")
    rows = manifest(prefix)
    assert len(rows) == count_lines(sample_corpus) and all(r["status"] == "dropped" for r in rows)
    stats = json.loads(open(f"{prefix}_stats.json").read())
    assert stats["documents_written"] == 0 and sum(stats["dropped_by_reason"].values()) == len(rows)
    with pytest.raises(InputError, match="no document kept"):
        run_preprocess(make_cfg([sample_corpus], prefix, sample_tokenizer, "--clean.min_chars=900000",
                                "--run.stage=prepare"))


def test_a_resumed_run_removes_temp_files_of_killed_writers(tmp_path, sample_corpus, sample_tokenizer):
    import subprocess
    import sys

    prefix = tmp_path / "t"
    cfg = make_cfg([sample_corpus], prefix, sample_tokenizer, "--run.tasks=3")
    run_preprocess(cfg)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    work = tmp_path / "t_work" / "prepare"
    try:
        stale = [work / "task-00001" / f"part.tmp{dead.pid}.bin", work / "task-00001" / f"part.tmp{dead.pid}.idx",
                 work / "task-00001" / ".candidates.jsonl.abc123.tmp",
                 tmp_path / f"t_text_document.tmp{dead.pid}.bin", tmp_path / f"t_text_document.tmp{dead.pid}.idx"]
        live = [work / "task-00002" / f"part.tmp{alive.pid}.bin"]
        for p in stale + live:
            p.write_bytes(b"half written")
        # As if killed while task 1 was being filtered (its clean step redone too).
        os.unlink(work / "task-00001" / "clean.json")
        os.unlink(work / "task-00001" / "filter.json")
        run_preprocess(cfg)
        assert not [p for p in stale if p.exists()]
        assert all(p.exists() for p in live)
    finally:
        alive.kill()
        alive.wait()


def test_hf_tokenizer_with_a_large_vocabulary_writes_int32(tmp_path, sample_corpus):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<unk>", "<|end_of_text|>"])
    texts = [json.loads(line)["text"] for line in open(sample_corpus, encoding="utf-8")]
    tok.train_from_iterator(texts, trainer)
    # Past megatron-core's uint16 limit (65,500), as Llama-3's 128,256 ids are: they must not wrap.
    tok.add_special_tokens([f"<|reserved_{i}|>" for i in range(66_000 - tok.get_vocab_size())])
    tok_dir = tmp_path / "hf"
    tok_dir.mkdir()
    tok.save(str(tok_dir / "tokenizer.json"))
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|end_of_text|>"}))

    loaded = load_tokenizer(tok_dir)
    assert loaded.vocab_size == 66_000 and loaded.eod_id == tok.token_to_id("<|end_of_text|>")
    assert np.dtype(loaded.dtype) == np.int32
    prefix = tmp_path / "hf_out"
    run_preprocess(make_cfg([sample_corpus], prefix, tok_dir))
    ds = read_dataset(prefix)
    assert ds.index.dtype == np.int32
    first = [r for r in manifest(prefix) if r["status"] == "kept"][0]
    assert ds[0][-1] == loaded.eod_id and len(ds[0]) == first["tokens"]


def test_summary_reads_well_for_small_and_empty_runs():
    from native_megatron.data.pipeline import format_summary

    stats = {"documents_in": 0, "documents_by_status": {}, "dropped_by_reason": {}, "tokens_written": 0,
             "tokenizer": {"dtype": "uint16", "vocab_size": 8000}, "partitions": 0,
             "outputs": {"dataset": "d", "manifest": "m"},
             "timing": {"seconds_total": 2.5, "documents_per_second": 0.4, "tokens_per_second": 12.3}}
    text = format_summary(stats)
    assert text.splitlines()[0] == "documents: 0 in"
    assert "0.40 docs/s, 12.3 tokens/s" in text
    # Issue 28 item 11: a lone --stage tokenize did not read the documents; no docs/s over its time alone.
    stats["timing"].update(stage="tokenize", documents_per_second=None)
    line = [t for t in format_summary(stats).splitlines() if t.startswith("time:")][0]
    assert line == "time:      2.5s for --stage tokenize alone, 12.3 tokens/s"


def test_loading_megatron_cores_writer_is_announced_once(tmp_path, caplog, monkeypatch):
    """Issue 28 item 8: a filter or tokenize task spent seconds importing megatron.core with no log line."""
    import logging
    import sys

    from native_megatron.data.indexed import _WRITER_MODULE, write_partition

    monkeypatch.delitem(sys.modules, _WRITER_MODULE, raising=False)   # as in a fresh task's process
    with caplog.at_level(logging.INFO, logger="native_megatron.data.indexed"):
        for name in ("a", "b"):
            write_partition([({"id": "x", "file": "f", "line": 1}, np.arange(5, dtype=np.uint16))],
                            str(tmp_path / name), np.uint16)
    said = [r.message for r in caplog.records if "megatron-core" in r.message]
    assert len(said) == 1 and "a few seconds, once per process" in said[0]
