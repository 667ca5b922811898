"""Where a run starts and what it leaves: the resume point, init_from, saves and their rotation.

The trainer's one contact with checkpoints, as torchtitan's CheckpointManager is:
before anything is built it finds the checkpoint to resume from (scanned, not
trusting ``latest``), takes the model settings of the checkpoint the run starts
from and compares the data setup with the resumed one's; once the model exists
it loads (a full resume, or weights only from ``init_from``) and saves. The
file format, atomicity and rotation are :mod:`checkpointing`'s.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from native_megatron.training import checkpointing
from native_megatron.training.config import TrainConfig, adopt_checkpoint_model
from native_megatron.training.data import data_setup, data_setup_changes
from native_megatron.utils.config import ConfigError

logger = logging.getLogger(__name__)


def find_resume_point(cfg: TrainConfig, log: bool = True) -> checkpointing.ResumePoint:
    """The newest loadable checkpoint under ``checkpoint.dir`` (none with ``checkpoint.resume=false``)."""
    root = cfg.checkpoint_dir()
    if not cfg.checkpoint.resume:
        steps = checkpointing.checkpoint_steps(root)
        if steps:
            raise ConfigError(f"checkpoint.resume=false, but {root} already holds checkpoints "
                              f"(iter_{steps[-1]:07d} the newest) that this run would overwrite and rotate "
                              f"away: give a new checkpoint.dir (or logging.run_dir), or move them")
        return checkpointing.ResumePoint(None, None)
    point = checkpointing.find_resumable(root)
    if point.step is not None and point.skipped and log:
        logger.warning("resuming from %s, skipping: %s", point.path, point.describe_skipped())
    return point


def adopt_start_model(cfg: TrainConfig, point: checkpointing.ResumePoint, given_keys: set[str] | None) -> TrainConfig:
    """``cfg`` with the model settings of the checkpoint the run starts from (resume, else init_from),
    as Megatron-LM's ``--use-checkpoint-args`` would take them (see :func:`adopt_checkpoint_model`)."""
    source = point.path or (Path(cfg.checkpoint.init_from) if cfg.checkpoint.init_from else None)
    if source is None:
        return cfg
    saved = checkpointing.read_saved_config(source)
    if saved is None:
        logger.warning("%s has no %s: its model settings cannot be checked", source, checkpointing.CONFIG_FILE)
        return cfg
    if point.path is None:
        _warn_precision_change(cfg, saved, source)
    return adopt_checkpoint_model(cfg, saved, given_keys, f"checkpoint {source}")


def _warn_precision_change(cfg: TrainConfig, saved, source: Path) -> None:
    """init_from weights stored in another precision than this run trains in: say so once (issue 28.6).

    An import made with ``--precision bf16`` from an fp32 model has already rounded the weights;
    training it in fp32 cannot bring the lost bits back, which a user comparing with the HF
    model sees as a logit difference of ~1e-3."""
    import torch

    theirs = saved.config.precision if "precision" in saved.keys else "auto"
    ours = cfg.resolved_precision(torch.cuda.is_available())
    if theirs != "auto" and theirs != ours:
        logger.warning("checkpoint.init_from %s holds %s weights and this run trains in %s: the weights keep "
                       "%s's rounding (to start from the source's exact values, import it again with "
                       "nm-convert hf-to-megatron --precision %s)", source, theirs, ours, theirs, ours)


def check_data_setup(cfg: TrainConfig, point: checkpointing.ResumePoint) -> tuple[dict, bool]:
    """This run's data setup, and whether it differs from the resumed checkpoint's (allowed by
    ``checkpoint.allow_data_change``); a difference not allowed is one line listing each key."""
    current = data_setup(cfg)
    path = point.path
    if path is None:
        return current, False
    saved = checkpointing.read_data_setup(path)
    compared = current
    if saved is None:  # an older checkpoint: its config.yaml still tells all but the files
        saved_cfg = checkpointing.read_saved_config(path)
        if saved_cfg is None:
            logger.warning("%s records no data setup: cannot check that this run reads the same data", path)
            return current, False
        saved = data_setup(saved_cfg.config, with_files=False)
        compared = {k: v for k, v in current.items() if not k.startswith("data.files[")}
        logger.warning("%s records no %s (older version): the dataset files are not compared", path,
                       checkpointing.DATA_SETUP_FILE)
    changes, moved = data_setup_changes(saved, compared)
    if moved:
        logger.info("the same datasets at new paths (files and weights unchanged): %s", "; ".join(moved))
    if not changes:
        return current, False
    if not cfg.checkpoint.allow_data_change:
        raise ConfigError(f"resuming from {path} with another data setup: {', '.join(changes)}; put them back, "
                          f"or pass --checkpoint.allow_data_change=true to go on past the {point.step}-step "
                          f"checkpoint's consumed samples in the new data order")
    logger.warning("data setup changed since %s (checkpoint.allow_data_change=true): %s", path, ", ".join(changes))
    return current, True


class CheckpointManager:
    """Loads the run's starting point into the model and saves it; collective calls (every rank).

    Made before the model exists (it holds what was decided from the checkpoint); :meth:`attach`
    hands it the objects a checkpoint holds once the trainer has built them.
    """

    def __init__(self, cfg: TrainConfig, point: checkpointing.ResumePoint, config_dict: dict, config_yaml: str,
                 data_setup: dict, data_changed: bool) -> None:
        self.cfg, self.point = cfg, point
        self.config_dict, self.config_yaml = config_dict, config_yaml
        self.data_setup, self.data_changed = data_setup, data_changed
        self.saved_steps: list[int] = []
        self.chunks = self.optimizer = self.scheduler = self.state = None

    @property
    def resumed_step(self) -> int | None:
        return self.point.step

    def attach(self, chunks, optimizer, scheduler, state) -> None:
        """The unwrapped model chunks, the optimizer, scheduler and TrainState to load into and save."""
        self.chunks, self.optimizer, self.scheduler, self.state = chunks, optimizer, scheduler, state

    def _state_dict(self, is_loading: bool, with_optimizer: bool = True, with_rng: bool = True) -> dict:
        return checkpointing.build_state_dict(self.chunks, self.optimizer, self.scheduler, self.state.state_dict(),
                                              self.config_dict, is_loading, with_optimizer=with_optimizer,
                                              with_rng=with_rng)

    def _tokenizer_to_copy(self) -> str | None:
        return None if self.cfg.data.mock or not self.cfg.data.tokenizer else self.cfg.data.tokenizer

    # ---- starting ---------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Resume from the checkpoint found, or start from ``init_from`` weights, or leave a fresh start."""
        if self.point.path is not None:
            self._load_full(self.point.path)
        elif self.cfg.checkpoint.init_from:
            problem = checkpointing.checkpoint_problem(self.cfg.checkpoint.init_from)
            if problem:
                raise checkpointing.CheckpointError(f"checkpoint.init_from {self.cfg.checkpoint.init_from}: "
                                                    f"{problem}")
            self._load_weights(self.cfg.checkpoint.init_from)

    def _load_full(self, path) -> None:
        logger.info("loading checkpoint %s ...", path)
        start = time.monotonic()
        same_layout = checkpointing.saved_layout_matches(path)
        loaded = checkpointing.load(path, self._state_dict(is_loading=True, with_rng=same_layout))
        self._load_model(loaded)
        self.optimizer.load_state_dict(loaded["optimizer"])
        self.scheduler.load_state_dict(loaded["scheduler"])
        self.state.load_state_dict(loaded["trainer"])
        if same_layout:
            checkpointing.restore_rng_state(loaded["rng_state"])
        else:
            logger.warning("checkpoint %s was saved at another TP/PP layout: weights and optimizer resharded, "
                           "RNG states (dropout) start afresh", path)
        logger.info("resumed from %s at step %d (%d samples consumed) in %.1fs", path, self.state.step,
                    self.state.consumed_samples, time.monotonic() - start)
        if self.data_changed:
            logger.warning("with the changed data setup, as Megatron-LM does: the first %d samples of the new data "
                           "order are skipped (the checkpoint's consumed count) and training goes on from sample "
                           "%d at step %d, its learning-rate schedule unchanged; samples seen before may come "
                           "again and others never", self.state.consumed_samples, self.state.consumed_samples,
                           self.state.step + 1)

    def _load_weights(self, path) -> None:
        logger.info("loading weights from %s ...", path)
        loaded = checkpointing.load(path, checkpointing.model_sharded_state_dict(self.chunks))
        self._load_model(loaded)
        self.optimizer.reload_model_params()
        logger.info("initialised weights from %s (fresh optimizer, step 0)", path)

    def _load_model(self, loaded: dict) -> None:
        if len(self.chunks) == 1:
            self.chunks[0].load_state_dict(loaded["model"])
        else:
            for i, c in enumerate(self.chunks):
                c.load_state_dict(loaded[f"model{i}"])

    # ---- saving -----------------------------------------------------------------------------------------------

    def save(self) -> str:
        """Save the current step as ``iter_N`` (atomic), point ``latest`` at it, rotate old ones."""
        start = time.monotonic()
        path = checkpointing.save(self.cfg.checkpoint_dir(), self.state.step, self._state_dict(is_loading=False),
                                  self.config_yaml, self.cfg.checkpoint.keep_last, self.saved_steps,
                                  tokenizer=self._tokenizer_to_copy(), data_setup=self.data_setup)
        logger.info("saved checkpoint %s in %.1fs", path, time.monotonic() - start)
        return str(path)

    def save_initial(self) -> str:
        """The initial weights to ``DIR/initial`` (for ``init_from``); resuming never picks it up."""
        path = os.path.join(self.cfg.checkpoint_dir(), "initial")
        checkpointing.save_weights(path, self._state_dict(is_loading=False, with_optimizer=False, with_rng=False),
                                   self.config_yaml, tokenizer=self._tokenizer_to_copy())
        logger.info("saved the initial weights to %s (use it as checkpoint.init_from)", path)
        return path
