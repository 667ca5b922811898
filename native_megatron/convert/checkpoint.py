"""The two conversions: an HF Llama or Qwen2 directory -> a weights-only dist_checkpointing checkpoint
(for ``checkpoint.init_from``), and any of our checkpoints -> an HF directory.

hf-to-megatron builds this rank's GPTModel chunk at the requested TP/PP (one process per
rank under torchrun, or a single process), fills each parameter from the HF tensors one at a
time, and saves with the trainer's own checkpoint code, so the model is held once (sharded
over the ranks). megatron-to-hf reads the model's tensors once and writes safetensors shards
as it converts them (the model in memory once, plus one output shard).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
import yaml

from native_megatron.convert.hf_tokenizer import pad_token_id, write_generation_config, write_hf_tokenizer
from native_megatron.convert.llama import (
    HFWeights,
    LlamaShape,
    hf_config_dict,
    hf_precision,
    hf_special_tokens,
    hf_tensors_for,
    local_shard,
    megatron_global,
    read_hf_config,
)
from native_megatron.data.tokenizer import TokenizerError, copy_tokenizer
from native_megatron.utils.config import ConfigError, config_to_dict, load_config
from native_megatron.utils.io import Progress

logger = logging.getLogger(__name__)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# The import record: the HF model's shape and family (llama / qwen2), and since the dtype fix the
# weights' dtype ("dtype": bf16/fp16/fp32, also config.yaml's precision), the HF model's own
# ("source_dtype") and its config.json's bos/eos/pad token ids. Imports made before Qwen2 support
# wrote it as hf_llama.json, without the family.
SHAPE_FILE, OLD_SHAPE_FILE = "hf_model.json", "hf_llama.json"
SHAPE_FIELDS = set(LlamaShape.__dataclass_fields__)


def _train_config(shape: LlamaShape, tp: int, pp: int, precision: str):
    from native_megatron.training.config import TrainConfig

    base = {**shape.model_overrides(), "parallel.tensor": tp, "parallel.pipeline": pp, "precision": precision,
            "data.mock": True, "data.paths": [], "data.seq_length": min(shape.max_positions, 4096),
            "model.spec": "local", "logging.tensorboard": False}
    return load_config(TrainConfig, None, [], base=base)


def hf_to_megatron(hf_dir: str, out: str, tp: int = 1, pp: int = 1, precision: str = "auto",
                   progress: bool = True) -> Path:
    """Import ``hf_dir``; ``precision`` "auto" keeps the HF model's own dtype (an fp32 model stays exact)."""
    from megatron.core import parallel_state

    from native_megatron.training import checkpointing, megatron_config
    from native_megatron.training.cpu_compat import cuda_to_cpu
    from native_megatron.training.distributed import destroy_distributed, init_distributed
    from native_megatron.training.model import build_model_chunks, padded_vocab_size

    shape = read_hf_config(hf_dir)
    hf = HFWeights(hf_dir)
    source = hf_precision(hf_dir)
    precision = source if precision == "auto" else precision
    if precision != source:
        logger.info("converting %s weights to %s (--precision); --precision auto keeps them as they are",
                    source, precision)
    # One process writes any layout: dist_checkpointing reshards on load, so it builds the whole
    # model (TP=1, PP=1) with the vocabulary padded as TP=tp pads it. Under torchrun with tp x pp
    # processes each rank builds and holds only its shard (for models too big for one host's memory).
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and world != tp * pp:
        raise ConfigError(f"hf-to-megatron --tp {tp} --pp {pp} runs as one process or as {tp * pp} "
                          f"(torchrun --nproc-per-node {tp * pp} ...), not {world}")
    build_tp, build_pp = (tp, pp) if world > 1 else (1, 1)
    cfg = _train_config(shape, build_tp, build_pp, precision)
    layout = init_distributed(cfg)
    try:
        vocab = padded_vocab_size(shape.vocab, cfg.model.make_vocab_size_divisible_by, tp)
        # initialize=False: every weight is overwritten from HF.
        tf_config = megatron_config.transformer_config(cfg, on_gpu=False, initialize=False)
        with cuda_to_cpu():  # tied embeddings under PP: the last stage's copy is all-reduced as a CUDA tensor
            (chunk,) = build_model_chunks(cfg, tf_config, vocab, "local")
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        params = list(chunk.named_parameters())
        with torch.no_grad(), Progress(len(params), "hf-to-megatron", enabled=progress and layout.rank == 0) as bar:
            for name, param in params:
                layer = None
                if name.startswith("decoder.layers."):
                    local_index = int(name.split(".")[2])
                    layer = chunk.decoder.layers[local_index].layer_number - 1
                full = megatron_global(hf, shape, name, layer, vocab)
                part = local_shard(name, param, full, tp_rank, build_tp)
                if part.shape != param.shape:
                    raise ConfigError(f"{name}: converted shape {tuple(part.shape)} != model shape "
                                      f"{tuple(param.shape)}")
                param.copy_(part.to(param.dtype))
                bar.update(1)
        config_dict = config_to_dict(cfg)
        sd = {"model": chunk.sharded_state_dict(), "config": config_dict}
        path = checkpointing.save_weights(out, sd, yaml.safe_dump(config_dict, sort_keys=False))
        if layout.rank == 0:
            record = {**shape.__dict__, "dtype": precision, "source_dtype": source, **hf_special_tokens(hf_dir)}
            (Path(out) / SHAPE_FILE).write_text(json.dumps(record, indent=1))
            _copy_hf_tokenizer(Path(hf_dir), Path(out) / "tokenizer")
        return path
    finally:
        destroy_distributed()


def _copy_hf_tokenizer(src: Path, dst: Path) -> list[str]:
    try:
        files = copy_tokenizer(src, dst)
    except TokenizerError:  # a model directory without tokenizer files: the import has none
        return []
    _save_as_loaded(src, dst)
    _embed_chat_template(src, dst)
    return files


def _save_as_loaded(src: Path, dst: Path) -> None:
    """Save into ``dst`` the tokenizer as AutoTokenizer loads ``src``, over the copied files: with the
    model's config.json beside it a Qwen2 tokenizer loads as Qwen2Tokenizer, whose splitting can differ
    from the copied tokenizer.json's, and the copy, without config.json, would load as the generic class.
    Saved, tokenizer_config.json names the class and tokenizer.json splits as it does."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(src))
    except (OSError, ValueError) as exc:  # the copy stays as it was; the data path reads it without transformers
        logger.warning("%s: AutoTokenizer cannot load it (%s); the import holds its files as they are", src, exc)
        return
    if tok.is_fast:  # a slow (sentencepiece-only) tokenizer is kept as copied
        tok.save_pretrained(str(dst))


def _embed_chat_template(src: Path, dst: Path) -> None:
    """Put ``src/chat_template.jinja`` (where transformers >= 4.50 saves the template) into
    ``dst/tokenizer_config.json``, which every later copy of the tokenizer (training checkpoints,
    the HF export) carries, so the exported model keeps its chat template."""
    template, config = src / "chat_template.jinja", dst / "tokenizer_config.json"
    if not (template.is_file() and config.is_file()):
        return
    c = json.loads(config.read_text(encoding="utf-8"))
    if not c.get("chat_template"):
        c["chat_template"] = template.read_text(encoding="utf-8")
        config.write_text(json.dumps(c, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def checkpoint_tokenizer(ckpt: Path, tokenizer: str | None = None) -> str | None:
    """The tokenizer of a checkpoint: ``tokenizer`` if given, else its own copy, else its config's path."""
    if tokenizer:
        return tokenizer
    own = ckpt / "tokenizer"  # an import may hold only generation_config.json there: no tokenizer
    if (own / "tokenizer.json").is_file() or any(own.glob("*.model")):
        return str(own)
    from native_megatron.training.checkpointing import read_saved_config

    saved = read_saved_config(ckpt)
    return (saved.config.data.tokenizer or None) if saved is not None else None


# The model settings an export needs from a checkpoint's config.yaml; vocab_size,
# max_position_embeddings and add_qkv_bias may be absent (the tokenizer, data.seq_length, llama).
_SHAPE_KEYS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
               "rotary_base", "rope_scaling", "norm_epsilon", "untie_embeddings")


def _checkpoint_shape(ckpt: Path, vocab_size: int | None, tokenizer: str | None = None) -> LlamaShape:
    """The model's shape: from the import record, else from the training config saved with it."""
    record = next((ckpt / f for f in (SHAPE_FILE, OLD_SHAPE_FILE) if (ckpt / f).exists()), None)
    if record is not None:
        shape = LlamaShape(**{k: v for k, v in json.loads(record.read_text()).items() if k in SHAPE_FIELDS})
        return shape if vocab_size is None else LlamaShape(**{**shape.__dict__, "vocab": vocab_size})
    from native_megatron.training.checkpointing import read_saved_config

    saved = read_saved_config(ckpt)
    if saved is None:
        raise ConfigError(f"{ckpt}: no config.yaml; is this a checkpoint written by pretrain_arabic.py?")
    # An old checkpoint's config may lack a key: a default there would export the wrong shape.
    missing = saved.missing(f"model.{k}" for k in _SHAPE_KEYS)
    if saved.config.model.max_position_embeddings is None:
        missing += saved.missing(["data.seq_length"])
    if missing:
        raise ConfigError(f"{ckpt}: its config.yaml does not give {', '.join(missing)}, so the model's shape "
                          f"is unknown; add them to that file")
    m = saved.config.model
    vocab = vocab_size or m.vocab_size
    if vocab is None:
        from native_megatron.data.tokenizer import TokenizerError, load_tokenizer

        tok = checkpoint_tokenizer(ckpt, tokenizer)
        if not tok:
            raise ConfigError(f"{ckpt}: the vocabulary size is unknown; pass --vocab-size or --tokenizer")
        try:
            vocab = load_tokenizer(tok).vocab_size
        except TokenizerError as exc:
            raise ConfigError(f"{ckpt}: {exc}; pass --tokenizer") from None
    return LlamaShape(layers=m.num_layers, hidden=m.hidden_size, ffn=m.ffn_hidden_size,
                      heads=m.num_attention_heads, kv_heads=m.num_query_groups, vocab=int(vocab),
                      max_positions=m.max_position_embeddings or saved.config.data.seq_length,
                      rope_theta=m.rotary_base, rope_scaling=m.rope_scaling, eps=m.norm_epsilon,
                      tied=not m.untie_embeddings,
                      family="qwen2" if m.add_qkv_bias else "llama")  # QKV biases: only Qwen2 has them


def megatron_to_hf(ckpt: str, out: str, dtype: str = "auto", tokenizer: str | None = None,
                   vocab_size: int | None = None, max_shard_bytes: int = 5 << 30, progress: bool = True) -> Path:
    import torch.distributed as dist
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor
    from safetensors.torch import save_file

    from native_megatron.training.checkpointing import CheckpointError, checkpoint_problem

    ckpt_dir, out_dir = Path(ckpt), Path(out)
    if not (ckpt_dir / "metadata.json").exists():
        raise ConfigError(f"{ckpt}: not a dist_checkpointing checkpoint (no metadata.json); pass an iter_* "
                          f"directory or an imported checkpoint")
    problem = checkpoint_problem(ckpt_dir)
    if problem:
        raise CheckpointError(f"checkpoint {ckpt_dir} cannot be loaded: {problem}")
    tokenizer = checkpoint_tokenizer(ckpt_dir, tokenizer)
    shape = _checkpoint_shape(ckpt_dir, vocab_size, tokenizer)
    started = False
    if not dist.is_initialized():
        from native_megatron.training.distributed import init_world_of_one

        init_world_of_one("gloo")
        started = True
    try:
        meta = dist_checkpointing.load_tensors_metadata(str(ckpt_dir))
        model_keys = sorted(k for k in meta if k.startswith(("embedding.", "decoder.", "output_layer.")))
        # auto: as the checkpoint stores its weights (fp32 from an fp32 import or run, bf16 from a bf16 run)
        torch_dtype = meta[model_keys[0]].dtype if dtype == "auto" else DTYPES[dtype]
        layer_keys = [k for k in model_keys if k.startswith("decoder.layers.")]
        other_keys = [k for k in model_keys if k not in layer_keys]
        out_dir.mkdir(parents=True, exist_ok=True)
        writer = _ShardWriter(out_dir, max_shard_bytes, save_file)

        # Every model tensor at its global shape (layers stacked on a leading axis), read once; the
        # HF tensors are views of them, written out shard by shard.
        req = {k: ShardedTensor.from_rank_offsets(k, torch.empty(meta[k].global_shape, dtype=meta[k].dtype),
                                                  replica_id=0) for k in model_keys}
        loaded = dist_checkpointing.load(req, str(ckpt_dir))
        with Progress(shape.layers + 1, "megatron-to-hf", enabled=progress) as bar:
            for key in other_keys:
                for name, v in hf_tensors_for(key, loaded.pop(key), shape, None).items():
                    writer.add(name, v.to(torch_dtype))
            bar.update(1)
            for layer in range(shape.layers):
                for key in layer_keys:
                    for name, v in hf_tensors_for(key, loaded[key][layer], shape, layer).items():
                        writer.add(name, v.to(torch_dtype))
                bar.update(1)
        writer.close()
    finally:
        if started:
            dist.destroy_process_group()
    # The tokenizer's special tokens, else those the imported HF model's config.json named.
    ids = {k: v for k, v in (import_record(ckpt_dir) or {}).items() if k.endswith("_token_id")}
    if tokenizer:
        bos_id, eos_id = write_hf_tokenizer(tokenizer, out_dir)
        pad_id = pad_token_id(out_dir)
        ids.update({k: v for k, v in (("bos_token_id", bos_id), ("eos_token_id", eos_id), ("pad_token_id", pad_id))
                    if v is not None})
        write_generation_config(out_dir, ids.get("bos_token_id"), ids["eos_token_id"])
    else:  # only a run on data.mock has none
        logger.warning("%s names no tokenizer (trained on mock data?): the export has none; pass --tokenizer",
                       ckpt_dir)
    config = hf_config_dict(shape, torch_dtype, ids.get("bos_token_id"), ids.get("eos_token_id"),
                            ids.get("pad_token_id"))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def import_record(ckpt: str | Path, _depth: int = 0) -> dict | None:
    """The import record (see SHAPE_FILE) of ``ckpt``, or of the import a training run started from
    (its config.yaml's ``checkpoint.init_from``); None when there is none."""
    ckpt = Path(ckpt)
    record = next((ckpt / f for f in (SHAPE_FILE, OLD_SHAPE_FILE) if (ckpt / f).exists()), None)
    if record is not None:
        return json.loads(record.read_text())
    if _depth > 8:
        return None
    from native_megatron.training.checkpointing import read_saved_config

    saved = read_saved_config(ckpt)
    init_from = saved.config.checkpoint.init_from if saved is not None else None
    return import_record(init_from, _depth + 1) if init_from and Path(init_from).is_dir() else None


def imported_dtype(ckpt: str | Path) -> str | None:
    """The weights' dtype of an import (bf16, fp16, fp32), for a trainer to warn when it trains from it in
    another precision; None for a checkpoint that is not an import or an import from before it was recorded."""
    record = import_record(ckpt)
    return record.get("dtype") if record else None


class _ShardWriter:
    """Writes tensors into model-0000i-of-0000n.safetensors files of at most max_bytes, and the index."""

    def __init__(self, out: Path, max_bytes: int, save_file) -> None:
        self.out, self.max_bytes, self.save_file = out, max_bytes, save_file
        self.pending: dict[str, torch.Tensor] = {}
        self.size = 0
        self.files: list[tuple[str, list[str]]] = []
        self.total = 0

    def add(self, name: str, t: torch.Tensor) -> None:
        nbytes = t.numel() * t.element_size()
        if self.pending and self.size + nbytes > self.max_bytes:
            self._flush()
        self.pending[name] = t.contiguous().clone()
        self.size += nbytes
        self.total += nbytes

    def _flush(self) -> None:
        tmp = f"part-{len(self.files):05d}.safetensors"
        self.save_file(self.pending, str(self.out / tmp), metadata={"format": "pt"})
        self.files.append((tmp, list(self.pending)))
        self.pending, self.size = {}, 0

    def close(self) -> None:
        if self.pending:
            self._flush()
        n = len(self.files)
        weight_map = {}
        for i, (tmp, names) in enumerate(self.files):
            final = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (self.out / tmp).rename(self.out / final)
            weight_map.update({name: final for name in names})
        if n > 1:
            index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
            (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
