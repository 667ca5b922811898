"""Chat SFT data: conversations tokenized with the model's own chat template, a loss mask on the
assistant's tokens, stored once as two parallel megatron-core indexed datasets, packed at train time.

A directory made by :func:`build_sft_data` holds, per split (``train``, ``valid``):

- ``{split}_text_document.bin/.idx``: one document per conversation, its token ids;
- ``{split}_mask_document.bin/.idx`` (uint8): the same lengths, 1 where the token is one the model
  must learn to produce (an assistant turn's tokens and its end-of-turn token), 0 elsewhere
  (system and user turns, the template's role headers, whatever follows the end-of-turn token);

and ``tokenizer/`` (the tokenizer as the build loaded it, chat template and class included),
``valid_ids.txt`` (the held-out conversations), ``skipped.jsonl`` (each conversation left out, with
its reason) and ``sft_stats.json``, written last as the mark of a complete build. Packing is not
stored: :class:`PackedSFTDataset` packs the conversations into ``seq_length`` tokens for each epoch,
so the sequence length is a training setting; the build only leaves out (or cuts, if asked) the
conversations longer than the one it is told, which packing would drop.

The mask is found without template-specific tags: the prompt up to each assistant turn is rendered
with ``add_generation_prompt=True``, and the turn is what the template adds after it. The prompt is
tokenized on its own, as the rewriting stage sends it at inference.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from native_megatron.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid")
STATS_FILE = "sft_stats.json"
TOKENIZER_DIR = "tokenizer"
VALID_IDS = "valid_ids.txt"
SKIPPED_FILE = "skipped.jsonl"
PARTIAL_DIR = ".partial-build"
ROLES = ("system", "user", "assistant")
# What to do with a conversation longer than the training sequence (seq_length + 1 tokens, as packing counts).
TOO_LONG = ("skip", "truncate")


class SFTDataError(ValueError):
    """A conversation, template or directory that cannot be used as SFT data; the message says why."""


def text_prefix(directory: str | os.PathLike, split: str) -> str:
    return os.path.join(str(directory), f"{split}_text_document")


def mask_prefix(directory: str | os.PathLike, split: str) -> str:
    return os.path.join(str(directory), f"{split}_mask_document")


# ---- tokenizing a conversation ------------------------------------------------------------------

def load_chat_tokenizer(path: str | os.PathLike):
    """The Hugging Face tokenizer at ``path`` (a model, checkpoint ``tokenizer/`` or export directory)."""
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise SFTDataError(f"--tokenizer {path}: not a directory (give the model's directory, with its "
                           f"tokenizer and chat template)")
    tok = AutoTokenizer.from_pretrained(str(path))
    if not tok.chat_template:
        raise SFTDataError(f"tokenizer {path} has no chat_template: SFT data is tokenized with the model's "
                           f"own template (use the instruct model's tokenizer)")
    return tok


def end_of_turn_id(tok) -> int | None:
    """The token that closes an assistant turn: the tokenizer's eos (Qwen's <|im_end|>, Llama-3.1's <|eot_id|>)."""
    return tok.eos_token_id


def conversation_problem(messages) -> str | None:
    """Why ``messages`` cannot be learned from (a short reason, the key its skips are counted under), or None.

    Every message needs a known role and string content; every assistant turn must say something,
    else the model is taught to answer with nothing.
    """
    if not isinstance(messages, list):
        return "messages_not_a_list"
    if not messages:
        return "no_messages"
    for m in messages:
        if not isinstance(m, dict) or "role" not in m:
            return "message_without_role"
        if m["role"] not in ROLES:
            return "unknown_role"
        if not isinstance(m.get("content"), str):
            return "content_not_a_string"
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    if not answers:
        return "no_assistant_turn"
    if any(not a.strip() for a in answers):
        return "empty_assistant_turn"
    return None


def _render(tok, messages: list[dict], generation_prompt: bool) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def tokenize_conversation(tok, messages: list[dict], eot: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, loss mask) of one conversation, rendered by the tokenizer's chat template.

    The mask is 1 on each assistant turn's tokens up to and including its last end-of-turn token
    ``eot`` (all of the turn when it has none), 0 on everything else.
    """
    if not messages or not any(m.get("role") == "assistant" for m in messages):
        raise SFTDataError("the conversation has no assistant message to learn")
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        prompt = _render(tok, messages[:i], generation_prompt=True)
        full = _render(tok, messages[:i + 1], generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise SFTDataError("the chat template does not render a conversation as its prompt followed by "
                               "the answer, so the assistant's tokens cannot be told apart")
        pieces += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    pieces.append((_render(tok, messages, generation_prompt=False)[len(done):], False))
    ids: list[int] = []
    mask: list[int] = []
    for text, learn in pieces:
        if not text:
            continue
        t = tok(text, add_special_tokens=False)["input_ids"]
        m = [int(learn)] * len(t)
        if learn and eot is not None and eot in t:
            last = len(t) - 1 - t[::-1].index(eot)
            m[last + 1:] = [0] * (len(t) - last - 1)
        ids += t
        mask += m
    return np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=np.uint8)


# ---- building the directory ---------------------------------------------------------------------

def read_conversations(files: Iterable[str]) -> Iterator[tuple[str, list[dict]]]:
    """(id, messages) of each JSONL line; a line without ``messages`` is an error naming file and line."""
    n = 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    messages = rec["messages"]
                except (ValueError, KeyError, TypeError):
                    raise SFTDataError(f"{path}:{line_no}: expected JSON with a 'messages' list "
                                       f"(as make_seed_pairs export writes it)") from None
                yield str(rec.get("id", n)), messages
                n += 1


def choose_valid(ids: list[str], fraction: float, seed: int) -> set[str]:
    """The held-out ids: ``fraction`` of them (at least one when there are two or more), fixed by ``seed``."""
    if fraction <= 0 or len(ids) < 2:
        return set()
    k = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    return set(random.Random(seed).sample(sorted(set(ids)), k))


@dataclass
class SplitStats:
    conversations: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    lengths: list[int] | None = None

    def to_dict(self) -> dict:
        lengths = np.asarray(self.lengths or [0])
        return {"conversations": self.conversations, "tokens": self.tokens, "trained_tokens": self.trained_tokens,
                "length_p50": int(np.percentile(lengths, 50)), "length_p99": int(np.percentile(lengths, 99)),
                "length_max": int(lengths.max())}


def fit_length(tokens: np.ndarray, mask: np.ndarray, seq_length: int | None, too_long: str
               ) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(tokens, mask, reason to skip or None) under the length policy: a conversation of n tokens takes
    n - 1 training positions, so it fits when n <= seq_length + 1; a longer one is skipped, or cut to
    fit when ``too_long`` is "truncate" (skipped still if no assistant token is left to learn)."""
    if seq_length is None or len(tokens) <= seq_length + 1:
        return tokens, mask, None
    if too_long == "skip":
        return tokens, mask, "too_long"
    tokens, mask = tokens[:seq_length + 1], mask[:seq_length + 1]
    return tokens, mask, None if mask[1:].any() else "too_long_no_answer_left"


def build_sft_data(files: list[str], tokenizer_path: str, out_dir: str, valid_fraction: float = 0.02,
                   seed: int = 0, progress: bool = True, seq_length: int | None = None,
                   too_long: str = "skip") -> dict:
    """Tokenize the chat JSONL ``files`` into ``out_dir`` (see the module docstring); returns its stats.

    A conversation that fails :func:`conversation_problem` or the length policy (``seq_length``,
    ``too_long``) is left out and counted by reason. Everything is written under ``out_dir/.partial-build``
    and moved into place only once complete, ``sft_stats.json`` last: an interrupted or failed build
    leaves no ``.bin`` without its ``.idx``, and no stats describing files of another build.
    """
    if too_long not in TOO_LONG:
        raise SFTDataError(f"too_long={too_long!r}: choose one of {', '.join(TOO_LONG)}")
    if seq_length is not None and seq_length < 1:
        raise SFTDataError(f"seq_length={seq_length}: give the training data.seq_length (a positive number)")
    ids, skipped = [], []
    for cid, messages in read_conversations(files):
        problem = conversation_problem(messages)
        if problem:
            skipped.append((cid, problem))
        ids.append(cid)
    if not ids:
        raise SFTDataError(f"no conversations in {', '.join(files)}")
    if len(set(ids)) != len(ids):
        raise SFTDataError("conversation ids repeat: give each line a unique 'id'")
    import shutil

    out = Path(out_dir)
    partial = out / PARTIAL_DIR
    if partial.exists():  # left by a build that was killed: nothing in it is trusted
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        summary = _build(files, tokenizer_path, partial, ids, dict(skipped), valid_fraction, seed, progress,
                         seq_length, too_long)
        _move_into_place(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    atomic_write_text(out / STATS_FILE, json.dumps(summary, indent=1, ensure_ascii=False))
    return summary


def _build(files, tokenizer_path, out: Path, ids, skipped: dict, valid_fraction, seed, progress, seq_length,
           too_long) -> dict:
    import shutil

    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from tqdm import tqdm

    from native_megatron.data.tokenizer import token_dtype

    tok = load_chat_tokenizer(tokenizer_path)
    eot = end_of_turn_id(tok)
    valid = choose_valid([i for i in ids if i not in skipped], valid_fraction, seed)
    vocab = len(tok)
    builders = {s: (IndexedDatasetBuilder(text_prefix(out, s) + ".bin", dtype=token_dtype(vocab)),
                    IndexedDatasetBuilder(mask_prefix(out, s) + ".bin", dtype=np.uint8)) for s in SPLITS}
    stats = {s: SplitStats(lengths=[]) for s in SPLITS}
    truncated = 0
    kept_valid = []
    for cid, messages in tqdm(read_conversations(files), total=len(ids), disable=not progress, unit="conv"):
        if cid in skipped:
            continue
        try:
            tokens, mask = tokenize_conversation(tok, messages, eot)
        except SFTDataError as exc:
            raise SFTDataError(f"conversation {cid}: {exc}") from None
        n = len(tokens)
        tokens, mask, problem = fit_length(tokens, mask, seq_length, too_long)
        if problem:
            skipped[cid] = problem
            continue
        truncated += len(tokens) < n
        split = "valid" if cid in valid else "train"
        kept_valid += [cid] if split == "valid" else []
        text_b, mask_b = builders[split]
        text_b.add_document(torch.from_numpy(tokens), [len(tokens)])
        mask_b.add_document(torch.from_numpy(mask.astype(np.int64)), [len(mask)])
        st = stats[split]
        st.conversations += 1
        st.tokens += len(tokens)
        st.trained_tokens += int(mask.sum())
        st.lengths.append(len(tokens))
    if not stats["train"].conversations:
        reasons = ", ".join(f"{r} {n}" for r, n in Counter(skipped.values()).most_common())
        raise SFTDataError(f"no conversation left to train on ({len(ids)} read, {len(skipped)} skipped: {reasons}); "
                           f"see docs/training.md (SFT) for what a conversation needs")
    for s, (text_b, mask_b) in builders.items():
        text_b.finalize(text_prefix(out, s) + ".idx")
        mask_b.finalize(mask_prefix(out, s) + ".idx")
    # Saved by the class that tokenized, not copied: its tokenizer_config.json names that class, so
    # AutoTokenizer loads the copy (without the model's config.json) as the build loaded it, and its
    # tokenizer.json splits text as that class does for the data path, which reads it without transformers.
    tok.save_pretrained(str(out / TOKENIZER_DIR))
    if (Path(tokenizer_path) / "generation_config.json").is_file():  # the model's sampling defaults travel too
        shutil.copy2(Path(tokenizer_path) / "generation_config.json", out / TOKENIZER_DIR / "generation_config.json")
    (out / VALID_IDS).write_text("".join(f"{i}\n" for i in kept_valid), encoding="utf-8")
    (out / SKIPPED_FILE).write_text("".join(json.dumps({"id": i, "reason": r}, ensure_ascii=False) + "\n"
                                            for i, r in skipped.items()), encoding="utf-8")
    counts = Counter(skipped.values())
    return {"inputs": [os.path.abspath(f) for f in files], "tokenizer": os.path.abspath(tokenizer_path),
            "tokenizer_class": type(tok).__name__,
            "vocab_size": vocab, "end_of_turn": tok.convert_ids_to_tokens(eot) if eot is not None else None,
            "chat_template_sha256": hashlib.sha256(tok.chat_template.encode("utf-8")).hexdigest(),
            "valid_fraction": valid_fraction, "seed": seed, "seq_length": seq_length, "too_long": too_long,
            "conversations_read": len(ids), "skipped": dict(counts.most_common()), "truncated": truncated,
            "splits": {s: stats[s].to_dict() for s in SPLITS}}


def _move_into_place(partial: Path, out: Path) -> None:
    """Move a finished build from ``partial`` into ``out``: the old stats first removed, the new written last."""
    import shutil

    (out / STATS_FILE).unlink(missing_ok=True)
    for path in sorted(partial.iterdir()):
        target = out / path.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(path, target)
    partial.rmdir()


def read_stats(directory: str | os.PathLike) -> dict:
    path = Path(directory) / STATS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise SFTDataError(f"{directory} is not an SFT data directory ({STATS_FILE} missing or unreadable): "
                           f"make one with tools/build_sft_data.py build") from None


# ---- packing at train time ----------------------------------------------------------------------

def pack_first_fit(lengths: np.ndarray, order: np.ndarray, capacity: int, window: int = 2048) -> list[np.ndarray]:
    """Bins of conversation indices, each holding at most ``capacity`` positions.

    First-fit decreasing within windows of ``window`` conversations taken in ``order``: nearly the
    fill of a global first-fit, while the shuffle still decides which conversations meet.
    """
    bins: list[np.ndarray] = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        rank = {int(c): i for i, c in enumerate(chunk)}
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        room = np.empty(0, dtype=np.int64)
        members: list[list[int]] = []
        for c in chunk:
            fits = np.nonzero(room >= lengths[c])[0]
            if len(fits):
                b = int(fits[0])
                room[b] -= lengths[c]
                members[b].append(int(c))
            else:
                room = np.append(room, capacity - lengths[c])
                members.append([int(c)])
        bins += [np.asarray(sorted(m, key=rank.__getitem__), dtype=np.int64) for m in members]
    return bins


class PackedSFTDataset:
    """Training sequences of ``seq_length`` tokens from one split of an SFT data directory.

    Each sample is a dict of tensors: ``tokens``, ``labels`` (the next token), ``loss_mask`` (the
    stored mask of the label) and ``position_ids`` (restarting at 0 in each conversation); with
    ``pack``, also ``segment_ids`` (the conversation of each position, padding its own segment),
    from which the trainer keeps attention within a conversation. A conversation of n tokens takes
    n - 1 positions, so no label crosses into the next conversation. Without ``pack`` each sample
    is one conversation, padded; causal attention alone then keeps the padding out.

    Epoch e shuffles the conversations with ``seed + e`` and packs them again; samples are drawn
    from as many epochs as ``num_samples`` needs. Conversations longer than ``seq_length + 1``
    tokens are left out (counted in ``dropped``).
    """

    def __init__(self, directory: str, split: str, seq_length: int, num_samples: int, seed: int,
                 pack: bool = True, pad_id: int = 0) -> None:
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.tokens = IndexedDataset(text_prefix(directory, split), mmap=True)
        self.masks = IndexedDataset(mask_prefix(directory, split), mmap=True)
        lengths = self.tokens.sequence_lengths.astype(np.int64)
        if not np.array_equal(lengths, self.masks.sequence_lengths):
            raise SFTDataError(f"{directory}: the {split} token and mask datasets disagree; build it again")
        self.seq_length, self.pack, self.pad_id = seq_length, pack, pad_id
        positions = lengths - 1
        keep = np.nonzero((positions >= 1) & (positions <= seq_length))[0]
        self.conversations, self.dropped = len(keep), len(lengths) - len(keep)
        if not len(keep):
            raise SFTDataError(f"{directory}: no {split} conversation fits data.seq_length={seq_length}")
        self.samples: list[np.ndarray] = []
        self.epochs = 0
        while len(self.samples) < max(num_samples, 1):
            order = keep[np.random.default_rng(seed + self.epochs).permutation(len(keep))]
            epoch = pack_first_fit(positions, order, seq_length) if pack else [np.asarray([c]) for c in order]
            if self.epochs == 0:
                self.per_epoch = len(epoch)
                self.fill = float(positions[keep].sum()) / (len(epoch) * seq_length)
            self.samples += epoch
            self.epochs += 1

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict:
        import torch

        s = self.seq_length
        tokens = np.full(s, self.pad_id, dtype=np.int64)
        labels = np.full(s, self.pad_id, dtype=np.int64)
        loss_mask = np.zeros(s, dtype=np.float32)
        position_ids = np.zeros(s, dtype=np.int64)
        members = self.samples[idx]
        segment_ids = np.full(s, len(members), dtype=np.int64)
        pos = 0
        for k, c in enumerate(members):
            ids = self.tokens[int(c)].astype(np.int64)
            mask = self.masks[int(c)]
            n = len(ids) - 1
            tokens[pos:pos + n], labels[pos:pos + n] = ids[:-1], ids[1:]
            loss_mask[pos:pos + n] = mask[1:]
            position_ids[pos:pos + n] = np.arange(n)
            segment_ids[pos:pos + n] = k
            pos += n
        position_ids[pos:] = np.arange(s - pos)
        sample = {"tokens": torch.from_numpy(tokens), "labels": torch.from_numpy(labels),
                  "loss_mask": torch.from_numpy(loss_mask), "position_ids": torch.from_numpy(position_ids)}
        if self.pack:
            sample["segment_ids"] = torch.from_numpy(segment_ids)
        return sample
