"""The tokenizer an HF export carries: any tokenizer the data path takes, written as HF files.

transformers, ``vllm serve`` and lm-evaluation-harness load a model directory
with ``AutoTokenizer``, so an export without ``tokenizer.json`` and
``tokenizer_config.json`` cannot be served or evaluated. Sources:

- an HF tokenizer directory (an imported Llama-3): its files are copied;
- a bare ``tokenizer.json``: wrapped with the end-of-text token as ``eos_token``;
- a sentencepiece BPE ``.model`` (``tools/train_tokenizer.py``): converted to
  an equivalent ``tokenizers`` BPE (same ids for the same text, byte fallback
  kept), as transformers converts Llama-2's tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

from native_megatron.data.tokenizer import (
    SentencePieceTokenizer,
    Tokenizer,
    TokenizerError,
    copy_tokenizer,
    load_tokenizer,
)
from native_megatron.utils.config import ConfigError


def _sentencepiece_as_tokenizers(model_file: str):
    """A ``tokenizers.Tokenizer`` that splits text exactly as the sentencepiece BPE ``model_file`` does."""
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, normalizers
    from transformers.convert_slow_tokenizer import SentencePieceExtractor, import_protobuf

    proto = import_protobuf().ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    norm = proto.normalizer_spec
    # What the conversion reproduces: BPE, no normalisation rule, whitespace kept as it is.
    if proto.trainer_spec.model_type != proto.trainer_spec.BPE or norm.name not in ("identity", "") \
            or norm.remove_extra_whitespaces or norm.precompiled_charsmap:
        raise ConfigError(f"{model_file}: only sentencepiece BPE models with identity normalisation can be "
                          f"exported as HF tokenizers; pass --tokenizer with an HF tokenizer directory")
    extracted = SentencePieceExtractor(model_file).extract(models.BPE)
    unk = proto.trainer_spec.unk_piece or "<unk>"
    tok = HFTok(models.BPE(extracted["vocab"], extracted["merges"], unk_token=unk,
                           byte_fallback=proto.trainer_spec.byte_fallback, fuse_unk=True))
    steps = [normalizers.Replace(" ", "\u2581")]
    if norm.add_dummy_prefix:
        steps.insert(0, normalizers.Prepend("\u2581"))
    tok.normalizer = normalizers.Sequence(steps)
    dec = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if norm.add_dummy_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(dec)
    return tok


def _piece(tok: Tokenizer, token_id: int | None) -> str | None:
    if token_id is None:
        return None
    if isinstance(tok, SentencePieceTokenizer):
        return tok.sp.id_to_piece(token_id)
    return tok.tok.id_to_token(token_id)


def write_hf_tokenizer(src: str | Path, out: str | Path) -> tuple[int | None, int]:
    """Write the tokenizer at ``src`` into the HF directory ``out``; returns (BOS id or None, EOS id).

    The EOS is the data path's end-of-document token, so generation stops where
    training documents ended.
    """
    from transformers import PreTrainedTokenizerFast

    src, out = Path(src), Path(out)
    try:
        tok = load_tokenizer(src)
    except TokenizerError as exc:
        raise ConfigError(f"tokenizer: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    if src.is_dir() and (src / "tokenizer_config.json").is_file() and (src / "tokenizer.json").is_file():
        copy_tokenizer(src, out)
        return tok.bos_id, tok.eod_id
    if isinstance(tok, SentencePieceTokenizer):
        backend = _sentencepiece_as_tokenizers(tok.path)
        unk = tok.sp.id_to_piece(tok.sp.unk_id()) if tok.sp.unk_id() >= 0 else None
    else:
        from tokenizers import Tokenizer as HFTok

        backend, unk = HFTok.from_file(tok.path), None
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=_piece(tok, tok.bos_id),
                                   eos_token=_piece(tok, tok.eod_id), unk_token=unk)
    fast.save_pretrained(str(out))
    return tok.bos_id, tok.eod_id


def pad_token_id(hf_dir: str | Path) -> int | None:
    """The id of the padding token that the HF tokenizer in ``hf_dir`` names, or None."""
    from tokenizers import Tokenizer as HFTok

    config, vocab = Path(hf_dir) / "tokenizer_config.json", Path(hf_dir) / "tokenizer.json"
    if not (config.is_file() and vocab.is_file()):
        return None
    pad = json.loads(config.read_text(encoding="utf-8")).get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    return HFTok.from_file(str(vocab)).token_to_id(pad) if isinstance(pad, str) else None


def write_generation_config(out: str | Path, bos_id: int | None, eos_id: int) -> None:
    path = Path(out) / "generation_config.json"
    if not path.exists():
        path.write_text(json.dumps({"bos_token_id": bos_id, "eos_token_id": eos_id}, indent=2) + "\n")
