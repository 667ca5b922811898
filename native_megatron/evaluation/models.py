"""The models to evaluate: HF directories as they are, megatron checkpoints exported first.

``--model`` takes an HF Llama directory (config.json + safetensors), a
checkpoint written by pretrain_arabic.py (an ``iter_*`` directory, or a run's
``checkpoints/`` directory, whose newest complete step is used), or an
imported checkpoint. Megatron checkpoints go through the converter
(``megatron_to_hf``) into ``OUT/exported/NAME`` once; a rerun reuses the export.

Tokenizer and start token: an HF directory brings its tokenizer; a checkpoint's
is ``--tokenizer`` if given, else the copy saved in the checkpoint, else the
one its config names (``data.tokenizer``), and the export carries it as HF
files. The model reads what that HF tokenizer puts in front of a text by
default (BOS for Llama, nothing for Qwen or for our exports), which is what
lm-evaluation-harness (``add_bos_token`` unset) and lighteval
(``add_special_tokens=True``) feed it, so the scores are comparable.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from native_megatron.data.tokenizer import Tokenizer, TokenizerError, load_tokenizer
from native_megatron.utils.config import ConfigError, resolve_precision

logger = logging.getLogger(__name__)

@dataclass
class LoadedModel:
    name: str
    path: str  # the HF directory scored
    source: str  # what the user gave
    model: torch.nn.Module
    tokenizer: Tokenizer
    start: list[int]
    chat_template_dir: str | None  # an HF directory whose tokenizer_config has a chat template
    tokenizer_dir: str | None = None  # the HF tokenizer directory lm-evaluation-harness is given


def split_name(spec: str) -> tuple[str, str]:
    """``raw=runs/raw/checkpoints`` -> ('raw', 'runs/raw/checkpoints'); a bare path is named after itself."""
    if "=" in spec and not Path(spec).exists():
        name, path = spec.split("=", 1)
        return name.strip(), path.strip()
    p = Path(spec.rstrip("/"))
    name = p.name
    if re.fullmatch(r"iter_\d+", name) or name in ("checkpoints", "initial"):
        parts = [x for x in p.parts if x not in ("checkpoints",)]
        name = "_".join(parts[-2:]) if len(parts) >= 2 else name
    return name, str(p)


def is_hf_dir(p: Path) -> bool:
    weights = any(p.glob("*.safetensors")) or (p / "pytorch_model.bin").is_file()
    return (p / "config.json").is_file() and weights


def megatron_checkpoint(p: Path) -> Path | None:
    """The dist_checkpointing directory to export for ``p``, or None if ``p`` is not one."""
    from native_megatron.training.checkpointing import iter_dir, latest_step

    if (p / "metadata.json").is_file():
        return p
    for root in (p, p / "checkpoints"):
        if root.is_dir():
            step = latest_step(root)
            if step is not None:
                return iter_dir(root, step)
    return None


def resolve(spec: str, out_dir: Path, tokenizer: str | None = None, progress: bool = True
            ) -> tuple[str, Path, str, bool]:
    """(name, HF directory, tokenizer path, trained here?) for one ``--model`` value; exports if needed."""
    name, path = split_name(spec)
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"--model {path}: not found")
    if is_hf_dir(p):
        tok = tokenizer or str(p)
        return name, p, tok, False
    ckpt = megatron_checkpoint(p)
    if ckpt is None:
        raise ConfigError(f"--model {path}: neither an HF model directory (config.json + safetensors) nor a "
                          f"megatron checkpoint (metadata.json, iter_* or checkpoints/)")
    from native_megatron.convert.checkpoint import checkpoint_tokenizer, megatron_to_hf
    from native_megatron.training.checkpointing import CheckpointError, checkpoint_problem

    problem = checkpoint_problem(ckpt)
    if problem:
        raise CheckpointError(f"--model {path}: checkpoint {ckpt} cannot be loaded: {problem}")
    tok = checkpoint_tokenizer(ckpt, tokenizer)
    if tok is None:
        raise ConfigError(f"--model {path}: the checkpoint names no tokenizer; pass --tokenizer")
    export = out_dir / "exported" / name
    stamp = export / "exported_from.txt"
    current = stamp.is_file() and stamp.read_text().strip() == str(ckpt.resolve())
    if not (current and (export / "tokenizer_config.json").is_file()):  # exports before tokenizers were written
        logger.info("exporting %s to %s", ckpt, export)
        megatron_to_hf(str(ckpt), str(export), dtype="bf16" if torch.cuda.is_available() else "fp32",
                       tokenizer=tok, progress=progress)
        stamp.write_text(str(ckpt.resolve()) + "\n")
    return name, export, tok, True


def default_start(hf) -> list[int]:
    """The ids an HF tokenizer (a directory or the loaded tokenizer) puts before a text by default (its
    post-processor's prefix)."""
    if isinstance(hf, (str, Path)):
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(hf))
    probe = "نص"
    bare = hf(probe, add_special_tokens=False).input_ids
    full = hf(probe).input_ids
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return full[:i]
    return []


def load(spec: str, out_dir: Path, tokenizer: str | None = None, device: str = "cpu",
         dtype: str = "auto", progress: bool = True) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()
    name, hf_dir, tok_path, _ = resolve(spec, out_dir, tokenizer, progress)
    try:
        tok = load_tokenizer(tok_path)
    except TokenizerError as exc:
        raise ConfigError(f"--model {spec}: {exc}") from None
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16,
                   "fp32": torch.float32}[resolve_precision(dtype, on_gpu=device.startswith("cuda"))]
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch_dtype).to(device).eval()
    hf_tok_dir = tok_path if (Path(tok_path) / "tokenizer_config.json").is_file() else hf_dir
    hf_tok = AutoTokenizer.from_pretrained(str(hf_tok_dir))
    start = default_start(hf_tok)
    # lighteval's test (models/utils.py uses_chat_template): the tokenizer has a template, wherever it is stored
    # (tokenizer_config.json or chat_template.jinja).
    chat_dir = str(hf_tok_dir) if getattr(hf_tok, "chat_template", None) is not None else None
    return LoadedModel(name=name, path=str(hf_dir), source=spec, model=model, tokenizer=tok, start=start,
                       chat_template_dir=chat_dir, tokenizer_dir=str(hf_tok_dir))
