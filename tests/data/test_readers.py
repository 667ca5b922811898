import gzip
import json
import os

import pytest

from native_megatron.data.readers import InputError, RecordSkip, expand_inputs, iter_records, parse_record


def write_lines(path, lines):
    path.write_bytes(b"".join(lines))
    return str(path)


def parsed(files, text_key="text", id_key="id"):
    out = []
    for rec in iter_records(files, text_key, id_key):
        try:
            out.append(parse_record(rec, text_key, id_key, os.path.basename(files[rec.file])))
        except RecordSkip as skip:
            out.append(skip.reason)
    return out


def test_jsonl_gz_zst_and_parquet_give_the_same_documents(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    rows = [{"id": "a", "text": "نص أول"}, {"id": "b", "text": "نص ثان"}]
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    plain = write_lines(tmp_path / "x.jsonl", [body])
    gz = tmp_path / "x.jsonl.gz"
    gz.write_bytes(gzip.compress(body))
    zst = tmp_path / "x.jsonl.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(body))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "x.parquet")
    expected = [("a", "نص أول"), ("b", "نص ثان")]
    for path in (plain, str(gz), str(zst), str(tmp_path / "x.parquet")):
        assert parsed([path]) == expected, path


def test_every_bad_line_is_a_counted_skip_with_its_line_number(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [
        b'{"id": "ok", "text": "\xd9\x86\xd8\xb5"}\n',   # valid
        b'{"id": "broken", "text": \n',                   # invalid JSON
        b'{"text": "\xff\xfe bad bytes"}\n',              # invalid UTF-8
        b'{"id": "nokey", "body": "x"}\n',                # missing text key
        b'{"id": "empty", "text": "   "}\n',              # empty text
        b'\n',                                            # blank line
        b'[1, 2]\n',                                      # not an object
        b'{"text": 42}\n',                                # text not a string
        b'{"text": null}\n',                              # null text
        b'{"text": "no id"}',                             # no trailing newline, no id
    ])
    records = list(iter_records([path], "text", "id"))
    assert [r.line for r in records] == list(range(1, 11))
    assert parsed([path]) == [("ok", "نص"), "invalid_json", "invalid_utf8", "missing_text_key", "empty_text",
                              "blank_line", "not_an_object", "text_not_string", "null_text",
                              ("bad.jsonl:10", "no id")]


def test_lone_surrogates_and_invalid_bytes_are_invalid_utf8_and_pairs_are_read(tmp_path):
    path = write_lines(tmp_path / "s.jsonl", [
        b'{"id": "hi", "text": "\\ud800 lone high surrogate"}\n',
        b'{"id": "lo", "text": "lone low \\udc80"}\n',
        b'{"id": "\\udfff", "text": "good text, broken id"}\n',
        b'{"text": "\xed\xa0\x80 surrogate as bytes"}\n',      # CESU-8: not UTF-8
        b'{"text": "cut \xd9"}\n',                              # truncated sequence
        b'{"id": "pair", "text": "\\ud83d\\ude00 pair"}\n',     # a valid surrogate pair
    ])
    out = parsed([path])
    assert out == ["invalid_utf8"] * 5 + [("pair", "\U0001F600 pair")]


def test_a_utf8_bom_does_not_cost_the_first_document(tmp_path):
    import zstandard

    body = b'\xef\xbb\xbf{"id": "a", "text": "\xd9\x86\xd8\xb5"}\n{"id": "b", "text": "x"}\n'
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(body))
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(body))
    # Files joined with cat keep each file's BOM at the start of a line.
    for path in (write_lines(tmp_path / "b.jsonl", [body]), write_lines(tmp_path / "cat.jsonl", [body[-25:], body]),
                 str(tmp_path / "b.jsonl.gz"), str(tmp_path / "b.jsonl.zst")):
        got = parsed([path])
        assert got[-2:] == [("a", "نص"), ("b", "x")], path


def test_text_and_id_keys(tmp_path):
    path = write_lines(tmp_path / "k.jsonl", [b'{"doc": 7, "content": "abc"}\n'])
    assert parsed([path], text_key="content", id_key="doc") == [("7", "abc")]


def test_parquet_without_the_text_column_counts_each_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"body": "x"}, {"body": "y"}]), tmp_path / "p.parquet")
    assert parsed([str(tmp_path / "p.parquet")]) == ["missing_text_key", "missing_text_key"]


def test_parquet_null_and_non_string_text_have_their_own_reasons(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", None]}), tmp_path / "n.parquet")
    pq.write_table(pa.table({"text": [3]}), tmp_path / "i.parquet")
    assert parsed([str(tmp_path / "n.parquet"), str(tmp_path / "i.parquet")]) == [
        ("n.parquet:1", "a"), "null_text", "text_not_string"]


def test_empty_file_and_truncated_gzip(tmp_path):
    empty = write_lines(tmp_path / "empty.jsonl", [])
    gz = tmp_path / "cut.jsonl.gz"
    body = b"".join(b'{"text": "a%d"}\n' % (i * 7919 % 100003) for i in range(50000))
    gz.write_bytes(gzip.compress(body)[:-1000])
    stats = {}
    out = []
    for rec in iter_records([empty, str(gz)], "text", "id", stats):
        try:
            out.append(parse_record(rec, "text", "id", "f")[1])
        except RecordSkip as skip:
            out.append(skip.reason)
    assert stats["empty_files"] == [empty]
    assert str(gz) in stats["read_errors"]
    assert out[-1] == "read_error" and 0 < len(out) - 1 < 50000
    assert all(t.startswith("a") for t in out[:-1])


def test_a_10mb_line_is_read_whole(tmp_path):
    big = "ب" * 5_000_000
    path = write_lines(tmp_path / "big.jsonl", [json.dumps({"text": big}, ensure_ascii=False).encode() + b"\n"])
    assert parsed([path]) == [("big.jsonl:1", big)]


def test_expand_inputs_directories_globs_and_errors(tmp_path):
    (tmp_path / "d").mkdir()
    for name in ("b.jsonl", "a.jsonl.gz", "notes.txt"):
        (tmp_path / "d" / name).write_bytes(b"")
    assert expand_inputs([str(tmp_path / "d")]) == [str(tmp_path / "d" / "a.jsonl.gz"), str(tmp_path / "d" / "b.jsonl")]
    assert expand_inputs([str(tmp_path / "d" / "*.jsonl")]) == [str(tmp_path / "d" / "b.jsonl")]
    with pytest.raises(InputError, match="input not found"):
        expand_inputs([str(tmp_path / "missing.jsonl")])
    with pytest.raises(InputError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.parquet")])
    with pytest.raises(InputError, match="unknown format"):
        expand_inputs([str(tmp_path / "d" / "notes.txt")])
    os.symlink(tmp_path / "gone.jsonl", tmp_path / "link.jsonl")
    with pytest.raises(InputError, match="input not found"):
        expand_inputs([str(tmp_path / "link.jsonl")])
    with pytest.raises(InputError, match="no input"):
        expand_inputs([])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_a_setup_error(tmp_path):
    path = tmp_path / "secret.jsonl"
    path.write_text("{}\n")
    path.chmod(0)
    with pytest.raises(InputError, match="not readable"):
        expand_inputs([str(path)])


@pytest.mark.parametrize("kind", ["gz", "bz2", "zst", "zst_frames"])
def test_a_truncated_compressed_stream_is_a_read_error_and_keeps_the_documents_before_the_cut(tmp_path, kind):
    """Issue 24 fault 4: a cut .zst was logged "is empty" and all its documents vanished."""
    import bz2

    import zstandard

    from native_megatron.data.readers import InputPiece, iter_pieces

    lines = [json.dumps({"id": str(i), "text": f"نص رقم {i} " * 20}, ensure_ascii=False).encode() + b"\n"
             for i in range(3000)]
    body = b"".join(lines)
    if kind == "gz":
        packed = gzip.compress(body)
    elif kind == "bz2":
        packed = bz2.compress(body, compresslevel=1)   # 100 kB blocks: the cut falls after whole blocks
    elif kind == "zst":
        packed = zstandard.ZstdCompressor().compress(body)
    else:   # several frames, as zstd --rsyncable or concatenated files give: the cut falls in a later one
        packed = b"".join(zstandard.ZstdCompressor().compress(b"".join(lines[i:i + 500])) for i in range(0, 3000, 500))
    path = tmp_path / f"x.jsonl.{kind.split('_')[0]}"
    path.write_bytes(packed[: len(packed) * 2 // 3])
    stats: dict = {}
    records = list(iter_pieces([InputPiece(0, str(path))], "text", "id", stats))
    assert str(path) in stats["read_errors"] and not stats.get("empty_files")
    read = [r for r in records if isinstance(r.payload, bytes)]
    assert len(read) > 1000 and [r.payload for r in read] == lines[:len(read)]   # whole lines only, in order
    assert records[-1].line == len(read) + 1 and not isinstance(records[-1].payload, bytes)
    complete = tmp_path / f"whole.jsonl.{kind.split('_')[0]}"
    complete.write_bytes(packed)
    assert [r.payload for r in iter_pieces([InputPiece(0, str(complete))], "text", "id", {})] == lines


def test_a_corpus_named_by_a_relative_or_an_absolute_path_is_the_same_file(tmp_path, monkeypatch):
    """Issue 28 item 10: the manifest's `file` is the input's absolute path, however it was named."""
    (tmp_path / "corpus").mkdir()
    path = write_lines(tmp_path / "corpus" / "a.jsonl", [b'{"id": "a", "text": "x"}\n'])
    monkeypatch.chdir(tmp_path)
    named = [expand_inputs(["corpus/a.jsonl"]), expand_inputs([path]), expand_inputs(["corpus"]),
             expand_inputs(["corpus/*.jsonl"]), expand_inputs(["./corpus/../corpus/a.jsonl"])]
    assert all(files == [path] for files in named)
