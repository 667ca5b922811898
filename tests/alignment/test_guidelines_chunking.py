import random
from pathlib import Path

import pytest

from native_megatron.alignment.chunking import join_chunks, split_document
from native_megatron.alignment.guidelines import load_guidelines
from native_megatron.utils.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("lang", ["en", "ar"])
def test_shipped_guidelines_render_a_prompt_with_every_principle(lang):
    g = load_guidelines(ROOT / "examples" / "guidelines" / f"native_alignment_{lang}.yaml")
    assert g.language == lang and len(g.principles) >= 10
    messages = g.messages("نص الوثيقة هنا")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert all(p.rule in messages[0]["content"] for p in g.principles)
    assert "نص الوثيقة هنا" in messages[1]["content"]
    assert g.tag.startswith("native-alignment@1.0#")
    ids = {p.id for p in g.principles}
    assert {"harmless", "keep_knowledge", "same_language", "no_ads", "values"} <= ids


def test_guidelines_errors(tmp_path):
    bad = tmp_path / "g.yaml"
    bad.write_text("name: x\nversion: 1\nprinciples: [{rule: r}]\nsystem_prompt: 'no slot'\n"
                   "user_template: '{document}'\n")
    with pytest.raises(ConfigError, match="no {principles} slot"):
        load_guidelines(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_guidelines(tmp_path / "none.yaml")


def words(text):
    return len(text.split())


def test_chunks_fit_and_join_back_exactly(sample_corpus):
    import json

    rng = random.Random(0)
    texts = [json.loads(line)["text"] for line in open(sample_corpus, encoding="utf-8")]
    # Long documents: several sample documents glued with paragraph breaks.
    docs = ["\n\n".join(rng.sample(texts, 5)).strip() for _ in range(30)]
    for doc in docs:
        for limit in (7, 40, 120):
            chunks = split_document(doc, limit, words)
            assert all(words(c.text) <= limit for c in chunks)
            assert join_chunks([c.text for c in chunks], chunks) == doc
            assert "".join(c.text + c.trailing for c in chunks) == doc


def test_chunks_prefer_paragraphs_then_sentences():
    doc = "أ ب ج د.\nهـ و ز. ح ط ي. ك ل م ن."
    chunks = split_document(doc, 4, words)
    assert [c.text for c in chunks] == ["أ ب ج د.", "هـ و ز.", "ح ط ي.", "ك ل م ن."]
    assert split_document("قصير جدا", 10, words)[0].text == "قصير جدا"
    assert join_chunks(["X", "Y"], split_document("a b.\nc d.", 2, words)) == "X\nY"
