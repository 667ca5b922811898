"""Tokenizers for the data path: sentencepiece models and Hugging Face tokenizers.

``load_tokenizer(path)`` accepts:

- a sentencepiece ``.model`` file (e.g. the one ``tools/train_tokenizer.py`` makes);
- a ``tokenizer.json`` file (Hugging Face ``tokenizers``);
- a directory holding either, such as a Llama-3 model directory, whose
  ``tokenizer_config.json`` names the end-of-text token.

Documents are encoded without special tokens; the end-of-document id (EOD) is
appended by the writer, and a BOS id only when asked for. Token files use the
narrowest dtype megatron-core allows for the vocabulary (uint16 below 65,500
ids, int32 above, e.g. for Llama-3's 128,256).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

# Tried in order when a Hugging Face tokenizer does not name its end-of-text token.
EOD_CANDIDATES = ("<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>", "<|im_end|>")


class TokenizerError(ValueError):
    """The tokenizer cannot be found or used as asked."""


# megatron-core's DType.optimal_dtype: uint16 below this many ids, int32 from it on. Kept
# here so that loading a tokenizer does not import megatron-core (4 s of start-up);
# tests/data/test_tokenizer.py checks it against megatron-core.
UINT16_BELOW = 65500


def token_dtype(vocab_size: int) -> type[np.number]:
    """The token file dtype for a vocabulary, decided as megatron-core decides it."""
    return np.uint16 if vocab_size is not None and vocab_size < UINT16_BELOW else np.int32


class Tokenizer(ABC):
    """What the data path needs: ids for texts, the vocabulary size and the EOD id."""

    path: str
    vocab_size: int
    eod_id: int
    bos_id: int | None

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens)."""

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of several texts as int64 arrays; subclasses make this fast."""
        return [np.asarray(self.encode(t), dtype=np.int64) for t in texts]

    @abstractmethod
    def decode(self, ids: list[int]) -> str:
        """Text for ``ids``."""

    @property
    def dtype(self) -> type[np.number]:
        return token_dtype(self.vocab_size)

    def describe(self) -> dict:
        return {"path": self.path, "kind": type(self).__name__, "vocab_size": self.vocab_size,
                "eod_id": self.eod_id, "bos_id": self.bos_id, "dtype": np.dtype(self.dtype).name}

    def identity(self) -> dict:
        """What makes its ids what they are, wherever its file lies: the file's content hash (sha256),
        the vocabulary size, the token width and the special ids."""
        with open(self.path, "rb") as f:
            content = hashlib.file_digest(f, "sha256").hexdigest()
        return {"sha256": content, **{k: v for k, v in self.describe().items() if k != "path"}}


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, model_path: str, eod_token: str | None = None) -> None:
        import sentencepiece as spm

        self.path = str(model_path)
        self.sp = spm.SentencePieceProcessor(model_file=self.path)
        self.vocab_size = self.sp.get_piece_size()
        if eod_token is not None:
            eod = self.sp.piece_to_id(eod_token)
            if eod == self.sp.unk_id() and eod_token != self.sp.id_to_piece(self.sp.unk_id()):
                raise TokenizerError(f"tokenizer {self.path} has no piece {eod_token!r} to use as EOD")
            self.eod_id = eod
        elif self.sp.eos_id() >= 0:
            self.eod_id = self.sp.eos_id()
        else:
            raise TokenizerError(f"tokenizer {self.path} defines no </s>; name one with tokenize.eod_token")
        bos = self.sp.bos_id()
        self.bos_id = bos if bos >= 0 else None

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        # One C++ call for the batch, numpy out: no Python int per token.
        return self.sp.encode_as_numpy(texts, num_threads=1)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode([int(i) for i in ids])


class HFTokenizer(Tokenizer):
    def __init__(self, tokenizer_json: str, eod_token: str | None = None,
                 config_dir: str | None = None) -> None:
        from tokenizers import Tokenizer as _Tok

        self.path = str(tokenizer_json)
        self.tok = _Tok.from_file(self.path)
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        config = _read_tokenizer_config(config_dir)
        eod_token = eod_token or _token_text(config.get("eos_token"))
        if eod_token is None:
            eod_token = next((t for t in EOD_CANDIDATES if self.tok.token_to_id(t) is not None), None)
        eod = self.tok.token_to_id(eod_token) if eod_token else None
        if eod is None:
            raise TokenizerError(f"tokenizer {self.path}: cannot find the end-of-text token; "
                                 f"name it with tokenize.eod_token")
        self.eod_id = eod
        bos_text = _token_text(config.get("bos_token"))
        self.bos_id = self.tok.token_to_id(bos_text) if bos_text else None

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        # encode_batch_fast skips character offsets, which we never use.
        encodings = self.tok.encode_batch_fast(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _read_tokenizer_config(directory: str | None) -> dict:
    if not directory:
        return {}
    path = Path(directory) / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        logger.warning("ignoring unreadable %s: %s", path, exc)
        return {}


def load_tokenizer(path: str | os.PathLike, eod_token: str | None = None) -> Tokenizer:
    """A tokenizer from a ``.model`` file, a ``tokenizer.json``, or a directory holding one."""
    p = Path(path)
    if not p.exists():
        raise TokenizerError(f"tokenizer not found: {p}")
    if p.is_dir():
        if (p / "tokenizer.json").is_file():
            return HFTokenizer(str(p / "tokenizer.json"), eod_token, config_dir=str(p))
        models = sorted(p.glob("*.model"))
        if models:
            return SentencePieceTokenizer(str(models[0]), eod_token)
        raise TokenizerError(f"tokenizer directory {p} holds neither tokenizer.json nor a sentencepiece .model")
    if p.suffix == ".json":
        return HFTokenizer(str(p), eod_token, config_dir=str(p.parent))
    if p.suffix == ".model":
        return SentencePieceTokenizer(str(p), eod_token)
    raise TokenizerError(f"tokenizer {p}: expected a sentencepiece .model, a tokenizer.json, or a directory")


# What an HF tokenizer directory needs; weights and other files of a model directory are never copied.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja", "generation_config.json")


def copy_tokenizer(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Copy the tokenizer at ``src`` (any form :func:`load_tokenizer` takes) into directory ``dst``.

    ``load_tokenizer(dst)`` then gives the same tokenizer, so a checkpoint or an
    export that carries this copy no longer depends on where the original lies.
    Returns the names copied.
    """
    import shutil

    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise TokenizerError(f"tokenizer not found: {src}")
    if src.is_dir():
        names = [f for f in TOKENIZER_FILES if (src / f).is_file()]
        names += [p.name for p in sorted(src.glob("*.model")) if p.name not in names]
        pairs = [(src / n, n) for n in names]
    elif src.suffix == ".json":
        pairs = [(src, "tokenizer.json")]
        pairs += [(src.parent / n, n) for n in TOKENIZER_FILES[1:] if n != "tokenizer.model"
                  and (src.parent / n).is_file()]
    else:
        pairs = [(src, src.name)]
    if not pairs:
        raise TokenizerError(f"tokenizer directory {src} holds no tokenizer files")
    dst.mkdir(parents=True, exist_ok=True)
    for path, name in pairs:
        shutil.copy2(path, dst / name)
    return [name for _, name in pairs]


def train_sentencepiece(texts, model_prefix: str, vocab_size: int, model_type: str = "bpe",
                        character_coverage: float = 0.9995, input_sentence_size: int = 2_000_000,
                        seed_sentencepiece_size: int = 1_000_000, num_threads: int = 1) -> str:
    """Train a sentencepiece model on an iterable of texts; returns the ``.model`` path.

    Settings follow Llama's: byte fallback (no unknown tokens, newlines survive as
    bytes), digits split one by one, whitespace kept exactly (the cleaner already
    normalised it) and no extra normalisation (the cleaner already applied NFKC).
    Ids: 0 <unk>, 1 <s>, 2 </s> (the EOD), 3 <pad>.
    """
    import sentencepiece as spm

    def lines():
        for text in texts:
            for line in text.split("\n"):
                if line.strip():
                    yield line

    Path(model_prefix).parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines(), model_prefix=str(model_prefix), vocab_size=vocab_size,
        model_type=model_type, character_coverage=character_coverage, byte_fallback=True,
        split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True, seed_sentencepiece_size=seed_sentencepiece_size,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, num_threads=num_threads, minloglevel=2)
    return f"{model_prefix}.model"
