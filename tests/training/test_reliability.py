"""Faults a multi-day run meets, each reproduced: broken checkpoints, a lost ``latest``, Ctrl-C,
data that does not fit the model, settings that do not fit the checkpoint, tiny splits.

Every test here failed before the fix it guards (see docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.training import (
    MOCK_TINY,
    ROOT,
    SCRIPT,
    TINY,
    env,
    losses,
    metrics,
    random_docs,
    torchrun_cmd,
    train,
    write_dataset,
)

TOKENIZER = ROOT / "examples" / "tokenizer" / "sample_ar.model"  # 8,000 ids; EOD 2


def run(args: list[str], nproc: int = 1, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_cmd(nproc, args), capture_output=True, text=True, timeout=timeout, env=env(),
                          cwd=cwd)


def error_lines(out: subprocess.CompletedProcess) -> list[str]:
    return [line for line in out.stderr.splitlines() if line.startswith("error:")]


def listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory):
    """A 4-step run on mock data with checkpoints at steps 2 and 4."""
    run_dir = tmp_path_factory.mktemp("four") / "run"
    train(run_dir, 1, *MOCK_TINY, "--schedule.train_steps=4", "--checkpoint.save_interval=2",
          "--checkpoint.save_initial=true")
    return run_dir


@pytest.fixture
def copy_of(tmp_path, four_steps):
    dst = tmp_path / "run"
    shutil.copytree(four_steps, dst)
    return dst


# ---- finding the checkpoint to resume from ------------------------------------------------------------------

def _truncate(path: Path, keep: int = 100) -> None:
    with open(path, "r+b") as f:
        f.truncate(keep)


FAULTS = {
    "truncated_shard": lambda c: _truncate(c / "__0_0.distcp"),
    "missing_shard": lambda c: (c / "__0_1.distcp").unlink(),
    "truncated_common": lambda c: _truncate(c / "common.pt"),
    "truncated_metadata_json": lambda c: _truncate(c / "metadata.json", 10),
    "missing_dcp_metadata": lambda c: (c / ".metadata").unlink(),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_broken_newest_checkpoint_is_skipped_and_named(copy_of, fault):
    from native_megatron.training.checkpointing import find_resumable

    ckpts = copy_of / "checkpoints"
    FAULTS[fault](ckpts / "iter_0000004")
    point = find_resumable(ckpts)
    assert point.step == 2
    name = {"truncated_shard": "__0_0.distcp", "missing_shard": "__0_1.distcp", "truncated_common": "common.pt",
            "truncated_metadata_json": "metadata.json", "missing_dcp_metadata": ".metadata"}[fault]
    assert point.skipped and "iter_0000004" in point.skipped[0] and name in point.skipped[0]


@pytest.mark.parametrize("latest", [None, "garbage\n", "2\n", "99\n"], ids=["missing", "garbage", "older", "absent_step"])  # noqa: E501
def test_resume_point_comes_from_scanning_not_from_latest(copy_of, latest):
    from native_megatron.training.checkpointing import find_resumable

    ckpts = copy_of / "checkpoints"
    if latest is None:
        (ckpts / "latest").unlink()
    else:
        (ckpts / "latest").write_text(latest)
    point = find_resumable(ckpts)
    assert point.step == 4
    assert any(s.startswith("latest") for s in point.skipped)


def test_rotation_keeps_checkpoints_newer_than_what_this_run_wrote(copy_of):
    from native_megatron.training.checkpointing import _prune, iter_dir

    ckpts = copy_of / "checkpoints"
    # Another run's (or a skipped) newer checkpoints at 30 and 40; this run has only written step 2.
    for step in (30, 40):
        shutil.copytree(ckpts / "iter_0000004", iter_dir(ckpts, step))
    _prune(ckpts, keep_last=1, written=[2])
    assert all(iter_dir(ckpts, s).is_dir() for s in (2, 30, 40))
    # Once this run writes a newer checkpoint, the older ones rotate away as usual.
    shutil.copytree(ckpts / "iter_0000004", iter_dir(ckpts, 50))
    _prune(ckpts, keep_last=2, written=[2, 50])
    assert [p.name for p in sorted(ckpts.glob("iter_*"))] == ["iter_0000040", "iter_0000050"]


@pytest.mark.slow
def test_resume_skips_a_truncated_checkpoint_and_a_lost_latest_and_logs_each_step_once(four_steps, copy_of):
    ckpts = copy_of / "checkpoints"
    _truncate(ckpts / "iter_0000004" / "__0_0.distcp")
    (ckpts / "latest").unlink()
    out = train(copy_of, 1, *MOCK_TINY, "--schedule.train_steps=6", "--checkpoint.save_interval=2")
    log = out.stdout + out.stderr
    warning = [line for line in log.splitlines() if "skipping" in line]
    assert len(warning) == 1 and "__0_0.distcp is truncated" in warning[0] and "latest is missing" in warning[0]
    assert "resumed from" in log and "at step 2" in log
    # The same samples and RNG as the uninterrupted run: steps 3 and 4 are bit-exact.
    ref, got = losses(four_steps), losses(copy_of)
    assert got[3] == ref[3] and got[4] == ref[4]
    assert [r["step"] for r in metrics(copy_of) if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert (ckpts / "latest").read_text().strip() == "6"


@pytest.mark.slow
def test_no_loadable_checkpoint_is_one_line_error_and_deletes_nothing(copy_of):
    ckpts = copy_of / "checkpoints"
    for step in (2, 4):
        _truncate(ckpts / f"iter_{step:07d}" / "common.pt")
    (ckpts / "latest").write_text("garbage")
    before = listing(ckpts)
    out = run([f"--logging.run_dir={copy_of}", *MOCK_TINY, "--schedule.train_steps=8",
               "--checkpoint.save_interval=2"])
    assert out.returncode != 0
    (line,) = error_lines(out)
    assert str(ckpts) in line and "none can be loaded" in line and "common.pt" in line
    assert "Traceback" not in out.stderr.split("error:")[0][-2000:]
    assert listing(ckpts) == before


@pytest.mark.slow
def test_resume_false_refuses_to_overwrite_existing_checkpoints(copy_of):
    before = listing(copy_of / "checkpoints")
    out = run([f"--logging.run_dir={copy_of}", *MOCK_TINY, "--checkpoint.resume=false"])
    assert out.returncode != 0
    (line,) = error_lines(out)
    assert "checkpoint.resume=false" in line and "iter_0000004" in line
    assert listing(copy_of / "checkpoints") == before


# ---- Ctrl-C -----------------------------------------------------------------------------------------------------

def _start_plain(run_dir: Path, *extra: str) -> subprocess.Popen:
    """``python pretrain_arabic.py`` in a session of its own, as a terminal would run it."""
    cmd = [sys.executable, str(SCRIPT), "--config", str(TINY), f"--logging.run_dir={run_dir}", *MOCK_TINY,
           "--schedule.train_steps=100000", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(), cwd=ROOT,
                            start_new_session=True)


def _wait_for_step(proc: subprocess.Popen, step: int, lines: list[str]) -> None:
    deadline = time.monotonic() + 240
    for line in proc.stdout:
        lines.append(line)
        if f"step {step:>6}/" in line:
            return
        assert time.monotonic() < deadline, "".join(lines[-20:])
    raise AssertionError("".join(lines[-40:]))


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_0(tmp_path):
    run_dir = tmp_path / "run"
    proc = _start_plain(run_dir)
    lines: list[str] = []
    _wait_for_step(proc, 3, lines)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    rest, _ = proc.communicate(timeout=120)
    log = "".join(lines) + rest
    assert proc.returncode == 0, log[-3000:]
    assert "Traceback" not in log and "received SIGINT" in log
    step = int((run_dir / "checkpoints" / "latest").read_text())
    assert step >= 3 and f"saved checkpoint {run_dir}/checkpoints/iter_{step:07d}" in log


def test_a_second_ctrl_c_exits_at_once_without_saving():
    # A process busy in a long step (or save) with the handler installed: the first Ctrl-C only asks
    # for a save, the second ends it with 130 at once.
    code = ("import os, signal, time\n"
            "from native_megatron.training.preemption import PreemptionHandler\n"
            "h = PreemptionHandler()\n"
            "os.kill(os.getpid(), signal.SIGINT); time.sleep(0.2)\n"
            "assert h.received == signal.SIGINT, h.received\n"
            "print('first handled', flush=True)\n"
            "os.kill(os.getpid(), signal.SIGINT); time.sleep(30)\n"
            "print('still running')\n")
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=60)
    assert out.returncode == 130, out.stderr
    assert "first handled" in out.stdout and "still running" not in out.stdout
    assert "second interrupt" in out.stderr and time.monotonic() - start < 20


# ---- model settings from the checkpoint ---------------------------------------------------------------------

def test_model_settings_not_given_come_from_the_checkpoint_and_given_ones_must_agree():
    from native_megatron.training.config import SavedConfig, TrainConfig, adopt_checkpoint_model
    from native_megatron.utils.config import ConfigError, given_keys, load_config

    args = ["--data.mock=true", "--data.paths=[]", "--model.num_layers=4"]
    cfg = load_config(TrainConfig, TINY, args)
    saved = {"model": {"num_layers": 4, "rotary_base": 10000.0, "norm_epsilon": 1e-6, "hidden_size": 64}}
    given = given_keys(TINY, args) - {"model.rotary_base"}  # as if the YAML did not set rotary_base
    adopted = adopt_checkpoint_model(cfg, SavedConfig.from_dict(saved), given, "ckpt")
    assert adopted.model.rotary_base == 10000.0 and adopted.model.norm_epsilon == 1e-6
    with pytest.raises(ConfigError) as exc:  # the YAML sets rotary_base: 500000
        adopt_checkpoint_model(cfg, SavedConfig.from_dict(saved), given_keys(TINY, args), "ckpt")
    assert "model.rotary_base checkpoint=10000.0 config=500000.0" in str(exc.value)
    saved["model"]["num_layers"] = 2
    with pytest.raises(ConfigError) as exc:
        adopt_checkpoint_model(cfg, SavedConfig.from_dict(saved), given_keys(TINY, args), "ckpt")
    assert "model.num_layers checkpoint=2 config=4" in str(exc.value) and "model.rotary_base" in str(exc.value)


@pytest.mark.slow
def test_resume_with_another_num_layers_is_one_line_listing_it(copy_of):
    out = run([f"--logging.run_dir={copy_of}", *MOCK_TINY, "--schedule.train_steps=6", "--model.num_layers=2"])
    assert out.returncode != 0
    (line,) = error_lines(out)
    assert "model.num_layers checkpoint=4 config=2" in line and "iter_0000004" in line


@pytest.mark.slow
def test_init_from_with_another_rope_base_is_one_line_listing_it(four_steps, tmp_path):
    out = run([f"--logging.run_dir={tmp_path / 'cpt'}", *MOCK_TINY, "--model.rotary_base=10000",
               "--model.rope_scaling=true", f"--checkpoint.init_from={four_steps / 'checkpoints' / 'initial'}"],
              nproc=2)
    assert out.returncode != 0
    (line,) = error_lines(out)  # once, not once per rank
    assert "model.rotary_base checkpoint=500000.0 config=10000.0" in line
    assert "model.rope_scaling checkpoint=False config=True" in line
    assert "--checkpoint.model_from_checkpoint=true" in line


def test_model_from_checkpoint_takes_the_checkpoints_values_over_the_configs():
    from native_megatron.training.config import SavedConfig, TrainConfig, adopt_checkpoint_model
    from native_megatron.utils.config import given_keys, load_config

    args = ["--data.mock=true", "--data.paths=[]", "--model.rotary_base=10000",
            "--checkpoint.model_from_checkpoint=true"]
    cfg = load_config(TrainConfig, TINY, args)
    saved = SavedConfig.from_dict({"model": {"rotary_base": 500000.0, "num_layers": 2}})
    adopted = adopt_checkpoint_model(cfg, saved, given_keys(TINY, args), "ckpt")
    assert (adopted.model.rotary_base, adopted.model.num_layers) == (500000.0, 2)


def test_init_from_a_checkpoint_whose_config_yaml_is_broken_is_one_line(tmp_path):
    ckpt = tmp_path / "initial"
    ckpt.mkdir()
    (ckpt / "config.yaml").write_text("model: {num_layers: [4\n")
    # One process without torchrun, so the exit code and stderr are pretrain_arabic.py's own.
    args = [str(SCRIPT), "--config", str(TINY), f"--logging.run_dir={tmp_path / 'run'}", *MOCK_TINY,
            f"--checkpoint.init_from={ckpt}"]
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env(), cwd=ROOT, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    (line,) = error_lines(out)
    assert "config.yaml is not valid YAML" in line and "Traceback" not in out.stderr


# ---- data that does not fit -------------------------------------------------------------------------------------

def _data_cfg(prefixes: list[str], split: str = "90,10,0", **model):
    from native_megatron.training.config import TrainConfig
    from native_megatron.utils.config import load_config

    args = [f"--data.paths={json.dumps(prefixes)}", f"--data.tokenizer={TOKENIZER}", f"--data.split={split}",
            *[f"--model.{k}={v}" for k, v in model.items()]]
    return load_config(TrainConfig, TINY, args)


@pytest.mark.parametrize("split, name", [("998,2,0", "validation"), ("949,50,1", "test")])
def test_a_split_with_no_documents_is_refused_before_megatron_core_loops(tmp_path, split, name):
    from native_megatron.training.data import check_data
    from native_megatron.utils.config import ConfigError

    prefix = write_dataset(tmp_path / "small_text_document", random_docs(200, 8000))
    with pytest.raises(ConfigError) as exc:
        check_data(_data_cfg([prefix], split), 8000, 8000)
    assert f"leaves the {name} split of {prefix} with 0 of 200 documents" in str(exc.value)
    check_data(_data_cfg([prefix], "90,10,0"), 8000, 8000)  # a split that gives each part documents passes


def test_an_empty_dataset_and_a_missing_tokenizer_are_one_line(tmp_path):
    from native_megatron.training.config import TrainConfig
    from native_megatron.training.data import check_data
    from native_megatron.utils.config import ConfigError, load_config

    prefix = write_dataset(tmp_path / "empty_text_document", [])
    with pytest.raises(ConfigError, match="empty_text_document.bin is empty"):
        check_data(_data_cfg([prefix]), 8000, 8000)
    with pytest.raises(ConfigError, match="data.tokenizer: .*nowhere.model not found"):
        load_config(TrainConfig, TINY, [f"--data.paths=[{prefix}]", f"--data.tokenizer={tmp_path}/nowhere.model"])


def _stats(prefix: str, vocab: int, max_id: int) -> str:
    """A preprocessing ``_stats.json`` for ``prefix`` as the data engineer writes it (the contract)."""
    import hashlib

    name = os.path.basename(prefix)
    files = {name: {"bin_bytes": os.path.getsize(prefix + ".bin"), "idx_bytes": os.path.getsize(prefix + ".idx"),
                    "idx_blake2b": hashlib.blake2b(Path(prefix + ".idx").read_bytes()).hexdigest()}}
    return json.dumps({"tokenizer": {"vocab_size": vocab}, "max_token_id": max_id, "dataset_files": files})


def test_data_from_another_vocabulary_is_refused(tmp_path):
    from native_megatron.training.data import check_data
    from native_megatron.utils.config import ConfigError

    # Recorded by preprocessing: made with a 30,000-token tokenizer, not data.tokenizer's 8,000.
    prefix = write_dataset(tmp_path / "other_text_document", random_docs(50, 8000))
    (tmp_path / "other_stats.json").write_text(_stats(prefix, 30000, 7999))
    with pytest.raises(ConfigError) as exc:
        check_data(_data_cfg([prefix]), 8000, 8000)
    assert "tokenized with a 30,000-token vocabulary" in str(exc.value) and "has 8,000" in str(exc.value)
    # Recorded max id beyond the model's rows.
    (tmp_path / "other_stats.json").write_text(_stats(prefix, 8000, 9000))
    with pytest.raises(ConfigError, match="holds token id 9,000, but the model's vocabulary has 8,000"):
        check_data(_data_cfg([prefix]), 8000, 8000)


@pytest.mark.parametrize("stats", ["stale", "older"])
def test_stats_not_tied_to_the_files_are_not_trusted_and_the_bin_is_scanned(tmp_path, caplog, stats):
    from native_megatron.training.data import check_data
    from native_megatron.utils.config import ConfigError

    prefix = write_dataset(tmp_path / "data_text_document", random_docs(200, 8000))
    stale = _stats(prefix, 8000, 7999)  # true of the files as first written
    prefix = write_dataset(tmp_path / "data_text_document", random_docs(200, 30000) + [[29999, 2]])
    if stats == "older":  # stats from before the contract: no dataset_files
        stale = json.dumps({k: v for k, v in json.loads(stale).items() if k != "dataset_files"})
    (tmp_path / "data_stats.json").write_text(stale)
    with caplog.at_level("INFO"), pytest.raises(ConfigError, match="holds token id 29,999"):
        check_data(_data_cfg([prefix]), 8000, 8000)
    why = "written for other files (bin_bytes, idx_bytes, idx_blake2b differ)" if stats == "stale" \
        else "does not record these files' sizes and checksum"
    assert why in caplog.text and "scanning the .bin" in caplog.text


@pytest.mark.slow
def test_ids_beyond_the_model_vocabulary_stop_a_tp2_run_before_any_step(tmp_path):
    # Nothing recorded beside the data (as from upstream preprocess_data.py): the .bin is scanned.
    prefix = write_dataset(tmp_path / "big_text_document", random_docs(200, 30000) + [[29999, 2]])
    out = run([f"--logging.run_dir={tmp_path / 'run'}", f"--data.paths=[{prefix}]", f"--data.tokenizer={TOKENIZER}",
               "--parallel.tensor=2", "--schedule.train_steps=5", "--schedule.eval_interval=0",
               "--logging.tensorboard=false"], nproc=2)
    assert out.returncode != 0
    assert "step      1/" not in out.stdout + out.stderr
    line = error_lines(out)[0]
    assert prefix in line and "token id 29,999" in line and "8,000 ids" in line


# ---- the data setup a checkpoint was trained on -----------------------------------------------------------------

def test_data_setup_changes_name_each_key_and_a_moved_dataset_is_not_one(tmp_path):
    from native_megatron.training.data import data_setup, data_setup_changes

    a = write_dataset(tmp_path / "a_text_document", random_docs(40, 8000, seed=1))
    b = write_dataset(tmp_path / "b_text_document", random_docs(40, 8000, seed=2))
    saved = data_setup(_data_cfg([0.5, a, 0.5, b]))
    assert data_setup_changes(saved, data_setup(_data_cfg([1, a, 1, b]))) == ([], [])  # the same weights
    changes, _ = data_setup_changes(saved, data_setup(_data_cfg([0.7, a, 0.3, b])))
    assert changes == [f"data.weight[{a}] checkpoint=0.5 config=0.7", f"data.weight[{b}] checkpoint=0.5 config=0.3"]
    changes, _ = data_setup_changes(saved, data_setup(_data_cfg([a])))  # a dataset less
    assert changes == [f"data.weight[{a}] checkpoint=0.5 config=1.0", f"data.weight[{b}] checkpoint=0.5 config=absent"]
    write_dataset(tmp_path / "b_text_document", random_docs(41, 8000, seed=2))  # the same path, other content
    (changes,), _ = data_setup_changes(saved, data_setup(_data_cfg([0.5, a, 0.5, b])))
    assert changes.startswith(f"data.files[{b}] checkpoint=") and "idx blake2b" in changes
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for suffix in (".bin", ".idx"):
        shutil.copy(a + suffix, moved / ("a_text_document" + suffix))
    new_a = str(moved / "a_text_document")
    saved = data_setup(_data_cfg([0.5, a, 0.5, b]))
    assert data_setup_changes(saved, data_setup(_data_cfg([0.5, new_a, 0.5, b]))) == ([], [f"{a} -> {new_a}"])


@pytest.mark.slow
def test_resume_with_another_data_setup_is_one_line_unless_allowed(copy_of):
    args = [f"--logging.run_dir={copy_of}", *MOCK_TINY, "--schedule.train_steps=5"]
    out = run([*args, "--schedule.global_batch_size=16", "--data.seq_length=64"])
    assert out.returncode != 0, out.stderr[-3000:]
    (line,) = error_lines(out)
    assert "iter_0000004 with another data setup" in line and "--checkpoint.allow_data_change=true" in line
    assert "schedule.global_batch_size checkpoint=8 config=16" in line
    assert "data.seq_length checkpoint=32 config=64" in line
    out = run([*args, "--schedule.global_batch_size=16", "--checkpoint.allow_data_change=true"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "the first 32 samples of the new data order are skipped" in out.stderr
    assert "FutureWarning" not in out.stderr  # megatron-core's deprecated torch calls while loading
    assert json.loads((copy_of / "checkpoints" / "iter_0000005" / "data_setup.json").read_text())[
        "schedule.global_batch_size"] == 16


def test_a_checkpoint_from_before_data_setup_json_is_compared_by_its_config_yaml(tmp_path, caplog):
    import yaml

    from native_megatron.training.checkpoint_manager import check_data_setup
    from native_megatron.training.checkpointing import ResumePoint
    from native_megatron.utils.config import ConfigError, config_to_dict

    a = write_dataset(tmp_path / "a_text_document", random_docs(40, 8000))
    ckpt = tmp_path / "iter_0000010"
    ckpt.mkdir()
    (ckpt / "config.yaml").write_text(yaml.safe_dump(config_to_dict(_data_cfg([a]))))  # no data_setup.json
    point = ResumePoint(10, ckpt)
    with caplog.at_level("WARNING"):
        assert check_data_setup(_data_cfg([a]), point)[1] is False
    assert "records no data_setup.json" in caplog.text
    with pytest.raises(ConfigError, match="data.split checkpoint=90,10,0 config=80,20,0"):
        check_data_setup(_data_cfg([a], "80,20,0"), point)


@pytest.mark.parametrize("saved_precision, warned", [("bf16", True), ("fp32", False)])
def test_init_from_weights_in_another_precision_are_named_once(tmp_path, caplog, saved_precision, warned):
    """Issue 28.6: a bf16 import trained in fp32 starts from rounded weights; the run says so."""
    import logging

    from native_megatron.training.checkpoint_manager import adopt_start_model
    from native_megatron.training.checkpointing import ResumePoint
    from native_megatron.training.config import TrainConfig
    from native_megatron.utils.config import load_config

    ckpt = tmp_path / "imported"
    ckpt.mkdir()
    (ckpt / "config.yaml").write_text(f"precision: {saved_precision}\n")
    cfg = load_config(TrainConfig, TINY, ["--data.mock=true", "--data.paths=[]", "--precision=fp32",
                                          f"--checkpoint.init_from={ckpt}"])
    with caplog.at_level(logging.WARNING, logger="native_megatron.training.checkpoint_manager"):
        adopt_start_model(cfg, ResumePoint(None, None), None)
    lines = [r.getMessage() for r in caplog.records if "init_from" in r.getMessage()]
    assert len(lines) == int(warned)
    if warned:
        assert "holds bf16 weights and this run trains in fp32" in lines[0] and "--precision fp32" in lines[0]
