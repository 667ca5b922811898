"""nm-tiny-model --corpus: the text key is chosen (--text-key), a wrong one is one line naming the keys seen,
lines without a text are counted, and the tokenizer is a BPE of --vocab-size tokens learned from the Arabic
corpus (it used to be the 260 bytes and special tokens, no merge learned, when no line had a `text` key)."""

from __future__ import annotations

import json

from native_megatron.cli.tiny_model import main
from tests.helpers.tiny_qwen2 import corpus_texts


def test_tiny_model_learns_its_vocabulary_from_the_corpus_text_key(tmp_path, capsys):
    from tokenizers import Tokenizer

    texts = corpus_texts()[:120]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "content": t}, ensure_ascii=False) + "\n"
                              for i, t in enumerate(texts)) + '{"id": "no text"}\n', encoding="utf-8")
    out = tmp_path / "tiny"
    assert main(["--out", str(out), "--corpus", str(corpus)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "keys seen: content, id" in err and "--text-key" in err, err
    assert not out.exists()

    assert main(["--out", str(out), "--corpus", str(corpus), "--text-key", "content", "--vocab-size", "600"]) == 0
    printed = capsys.readouterr().out
    assert "a 600-token BPE learned from 120 texts" in printed and "skipped 1 lines without a text: " \
        "missing_text_key 1" in printed, printed
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.get_vocab_size() == 600
    arabic = "".join(texts[:20])
    # byte-level: about 2 bytes a character; learned merges bring it well under one token a character
    assert len(tok.encode(arabic).ids) < 0.7 * len(arabic)
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 600
