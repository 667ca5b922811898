"""benchmarks/gpu_check.py: the dry run gives every stage a status, the targets are judged from the
benchmarks' numbers, and a stage that fails or runs out of time does not stop the others."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
# The ~1B training run before the sweeps, so that they cannot take its time.
STAGES = ["wheels", "env", "build", "pytest", "pretrain-tiny", "pretrain-1b", "bench-kernels", "bench-train",
          "parallel"]


def run(*args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def make_wheel(folder: Path) -> Path:
    """A minimal wheel, to see the wheels stage install it for the later stages: a package, a console script
    (nm-probe) and, as ninja's wheel has, an executable program in its .data/scripts (nm-probe-tool)."""
    name, dist, data = "nm_gpu_check_probe", "nm_gpu_check_probe-0.1.dist-info", "nm_gpu_check_probe-0.1.data"
    files = {f"{name}/__init__.py": "VERSION = '0.1'\n\ndef main():\n    print('probe', VERSION)\n",
             f"{data}/scripts/nm-probe-tool": "#!/bin/sh\necho tool-ok\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
             f"{dist}/entry_points.txt": f"[console_scripts]\nnm-probe = {name}:main\n"}
    files[f"{dist}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{dist}/RECORD"])
    path = folder / f"{name}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            info = zipfile.ZipInfo(f)
            info.external_attr = (stat.S_IFREG | (0o755 if "/scripts/" in f else 0o644)) << 16
            z.writestr(info, text)
    return path


@pytest.mark.slow
def test_dry_run_checks_every_stage(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels)
    start = time.monotonic()
    out = run("--dry-run", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--wheels", str(wheels))
    wall = time.monotonic() - start
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["dry_run"] is True and report["finished"] is True
    assert list(report["stages"]) == STAGES
    statuses = {name: s["status"] for name, s in report["stages"].items()}
    assert set(statuses.values()) == {"ok"}, statuses
    stages = {name: s["results"] for name, s in report["stages"].items()}
    assert stages["wheels"]["wheels"] == ["nm_gpu_check_probe-0.1-py3-none-any.whl"]
    assert (Path(stages["wheels"]["site"]) / "nm_gpu_check_probe" / "__init__.py").exists()
    assert stages["pytest"]["collected"] > 0
    assert {(r["op"], r["pass"]) for r in stages["bench-kernels"]["rows"]} >= {("rmsnorm", "fwd"), ("swiglu", "bwd")}
    assert {r["spec"] for r in stages["bench-train"]["rows"]} == {"local", "native"}
    assert stages["pretrain-tiny"]["resumed_at"] == 2 and stages["pretrain-tiny"]["steps"] == 4
    assert stages["parallel"]["tp2_max_diff"] <= stages["parallel"]["tol"]
    assert stages["parallel"]["pp2_max_diff"] <= stages["parallel"]["tol"]
    assert len(report["targets"]) == 9
    assert {t["status"] for t in report["targets"]} <= {"dry-run", "n/a"}
    assert "stage / target" in out.stdout and "DRY RUN" in out.stdout
    assert (tmp_path / "out" / "gpu_check.log").stat().st_size > 0
    print(f"dry run: {wall:.0f}s")


def test_a_failing_stage_leaves_the_others_to_run(tmp_path):
    empty = tmp_path / "no_wheels"
    empty.mkdir()
    out = run("--dry-run", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--wheels", str(empty),
              "--stages", "wheels,pretrain-1b")
    assert out.returncode == 1
    stages = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["stages"]
    assert stages["wheels"]["status"] == "failed" and "no .whl files" in stages["wheels"]["summary"]
    assert stages["env"]["status"] == "ok" and stages["pretrain-1b"]["status"] == "ok"


def load_gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # its benchmarks/presets.py
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_command_past_its_deadline_is_stopped(tmp_path, monkeypatch):
    gc = load_gpu_check(monkeypatch)
    args = SimpleNamespace(dry_run=True, out=str(tmp_path / "out"), work=str(tmp_path / "work"), budget_s=60)
    stage = gc.StageRun(gc.Check(args), "test")
    start = time.monotonic()
    cmd = stage.sh([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                   time.monotonic() + 2)
    assert cmd.timed_out and not cmd.ok and time.monotonic() - start < 20
    assert cmd.lines == ["started"]


def test_targets_are_judged_from_the_measurements(monkeypatch):
    gc = load_gpu_check(monkeypatch)

    def row(op, p, bw, liger=None):
        return {"op": op, "pass": p, "bw_copy": bw, "ours_ms": 1.0, "ratio": {"eager": 2.0, "liger": liger}}

    kernels = {"rows": [row("rmsnorm", "fwd", 0.93, 1.2), row("rmsnorm", "bwd", 0.91, 0.95),
                        row("swiglu", "fwd", 0.95, 1.1), row("swiglu", "bwd", 0.85, 1.0),
                        row("rope (q)", "fwd", 0.92), row("rope (q)", "bwd", 0.90),
                        row("cross-entropy", "fwd", 0.7, 1.3), row("cross-entropy", "bwd", 0.8, 1.1)],
               "xent_extra": {"ours": 0.001, "eager": 5.0}, "competitors": {"liger-kernel": "0.8.5"},
               "ours": "CUDA kernels"}
    train = {"rows": [{"spec": "native", "mbs": 2, "mfu": 0.41}, {"spec": "local", "mbs": 2, "mfu": 0.30}]}
    check = SimpleNamespace(dry=False, report={"stages": {"bench-kernels": {"results": kernels},
                                                          "bench-train": {"results": train}}})
    got = {t["target"]: t for t in gc.judge(check)}
    assert got["RMSNorm fwd >= 0.90 of copy bandwidth"]["status"] == "met"
    assert got["SwiGLU bwd >= 0.90 of copy bandwidth"]["status"] == "missed"
    assert got["RoPE bwd >= 0.90 of copy bandwidth"]["status"] == "met"
    assert got["cross-entropy: < 1 logits-sized buffer beyond its gradient"]["status"] == "met"
    slower = got["each kernel no slower than Liger / TE"]
    assert slower["status"] == "missed" and "rmsnorm bwd liger 0.95" in slower["measured"]
    mfu = got["~1B model MFU >= 45% (best spec)"]
    assert mfu["status"] == "missed" and "41.0% (native" in mfu["measured"]


class PretendGPU:
    """A stage's view of a one-H200 machine with transformer-engine: records each command and answers it
    as that machine would (``answer(argv) -> output lines``), so the GPU-only paths run here."""

    def __init__(self, gc, work: Path, answer):
        self.gc, self.answer, self.calls = gc, answer, []
        self.dry, self.work, self.gpus = False, work, 1
        self.args = SimpleNamespace(wheels=None)
        self.env_info = {"gpus": [{"name": "NVIDIA H200", "capability": "9.0"}], "cpus": 16,
                         "optional": {"transformer-engine": "2.8.0"}, "torch": "2.11.0+cu130", "torch_cuda": "13.0",
                         "nvcc_version": "13.0", "cuda_home": "/usr/local/cuda", "cxx": "/usr/bin/c++",
                         "ninja": "/usr/bin/ninja", "needed": {"psutil": "7.2.2"}}
        self.report = {"stages": {"build": {"results": {"cuda": True}}}}

    def sh(self, argv, deadline, extra_env=None):
        self.calls.append((argv, extra_env or {}))
        return self.gc.Command(argv, 0, 1.0, False, self.answer(argv))


def test_the_gpu_build_compiles_for_this_machines_chip(tmp_path, monkeypatch):
    gc = load_gpu_check(monkeypatch)
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    gpu = PretendGPU(gc, tmp_path, lambda argv: ['{"describe": "C++ extension (CPU and CUDA kernels)", '
                                                 '"built": true, "cuda": true}'])
    summary = gc.stage_build(gpu, time.monotonic() + 60, res := {})
    (build, env), _ = gpu.calls
    assert build[1:] == ["setup.py", "build_ext", "--inplace"]
    assert env == {"NM_BUILD_EXT": "1", "MAX_JOBS": "16", "TORCH_CUDA_ARCH_LIST": "9.0"}
    assert res["cuda"] and "sm_90" in summary


def test_the_gpu_training_benchmark_measures_every_spec(tmp_path, monkeypatch):
    gc = load_gpu_check(monkeypatch)

    def answer(argv):
        rows = [{"spec": s, "mbs": 2, "tok_s": 1e5, "tflops": 400.0, "mfu": 0.4} for s in ("local", "native", "te")]
        Path(argv[argv.index("--json") + 1]).write_text(json.dumps({"rows": rows, "errors": []}))
        return []

    gpu = PretendGPU(gc, tmp_path, answer)
    summary = gc.stage_bench_train(gpu, time.monotonic() + 150, {})
    argv = gpu.calls[0][0]
    assert argv[argv.index("--preset") + 1] == "1b" and argv[argv.index("--specs") + 1] == "local,native,te"
    assert "te 100,000 tok/s" in summary and "MFU 40.0%" in summary


def test_the_gpu_pretraining_saves_and_resumes_and_the_1b_run_only_trains(tmp_path, monkeypatch):
    gc = load_gpu_check(monkeypatch)

    def answer(argv):
        run_dir = Path(next(a for a in argv if a.startswith("--logging.run_dir=")).split("=", 1)[1])
        steps = int(next(a for a in argv if a.startswith("--schedule.train_steps=")).split("=")[1])
        first = steps in (15, gc.STEPS_1B)
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "metrics.jsonl", "a") as f:
            for step in range(1 if first else 16, steps + 1):
                f.write(json.dumps({"step": step, "loss": 10 - step / 10, "tokens_per_s": 5e4, "mfu": 0.3,
                                    "memory_gib": 40.0}) + "\n")
        if first:
            return ["model: 1,498,000,000 parameters (native spec), vocab 128256",
                    "saved checkpoint c/iter_0000015 in 12.5s"]
        return ["resumed from c/iter_0000015 at step 15 (60 samples consumed) in 8.0s"]

    gpu = PretendGPU(gc, tmp_path, answer)
    summary = gc.stage_pretrain(gpu, time.monotonic() + 200, res := {}, "tiny")
    first, second = (argv for argv, _ in gpu.calls)
    assert "--precision=bf16" in first
    assert "--checkpoint.save_at_end=true" in first and "--checkpoint.save_at_end=false" in second
    assert res["resumed_at"] == 15 and res["steps"] == 30 and res["spec"] == "native"
    assert res["save_s"] == 12.5 and res["load_s"] == 8.0 and res["mfu"] == 0.3
    assert "resumed at 15" in summary

    # The ~1B run: one run, no ~20 GB save to eat its time; its speed from the steps after the warm-up.
    gpu.calls.clear()
    summary = gc.stage_pretrain(gpu, time.monotonic() + 200, res := {}, "1b")
    (argv, _), = gpu.calls
    assert "--schedule.micro_batch_size=1" in argv and "--checkpoint.save_at_end=false" in argv
    assert f"--schedule.train_steps={gc.STEPS_1B}" in argv
    assert res["steps"] == gc.STEPS_1B and res["mfu"] == 0.3 and "resumed_at" not in res
    assert "no save" in summary and "MFU 30.0%" in summary


def test_without_psutil_the_saving_stage_fails_at_once(tmp_path, monkeypatch):
    """megatron-core's checkpoint writer raises in a child without psutil and the save hangs until the cap."""
    gc = load_gpu_check(monkeypatch)
    gpu = PretendGPU(gc, tmp_path, lambda argv: [])
    gpu.env_info["needed"]["psutil"] = "absent"
    with pytest.raises(gc.StageError, match="psutil is missing"):
        gc.stage_pretrain(gpu, time.monotonic() + 200, {}, "tiny")
    assert gpu.calls == []


@pytest.mark.parametrize("change, said", [
    ({"nvcc_version": None}, "no nvcc"),
    ({"nvcc_version": "12.8"}, "nvcc 12.8 .* does not match torch's CUDA 13.0"),
    ({"cxx": None}, "no host C\\+\\+ compiler")])
def test_no_cuda_build_says_why_and_no_kernel_target_is_judged(tmp_path, monkeypatch, change, said):
    """Without a usable nvcc setup.py quietly builds CPU kernels only, and the benchmark would time the torch
    reference as ours: the build says why in one line, and no kernel target is met or missed."""
    gc = load_gpu_check(monkeypatch)
    gpu = PretendGPU(gc, tmp_path, lambda argv: ['{"describe": "C++ extension (CPU only kernels)", '
                                                 '"built": true, "cuda": false}'])
    gpu.env_info.update(change)
    with pytest.raises(gc.StageError, match=said) as err:
        gc.stage_build(gpu, time.monotonic() + 60, {})
    assert "\n" not in str(err.value) and gpu.calls == []

    rows = [{"op": op, "pass": p, "bw_copy": 0.95, "ours_ms": 1.0, "ratio": {"liger": 1.5}}
            for op in ("rmsnorm", "swiglu", "rope (q)") for p in ("fwd", "bwd")]
    kernels = {"ours": "torch reference", "rows": rows, "xent_extra": {"ours": 0.5}}
    check = SimpleNamespace(dry=False, report={"stages": {"bench-kernels": {"results": kernels}}})
    statuses = {t["target"]: t["status"] for t in gc.judge(check)}
    assert set(statuses.values()) == {"n/a"}, statuses


def test_pytest_runs_only_the_files_with_gpu_tests(tmp_path, monkeypatch):
    """Collecting all of tests/ imports what the device lacks (collection errors with every gpu test passing)."""
    gc = load_gpu_check(monkeypatch)
    gpu = PretendGPU(gc, tmp_path, lambda argv: [])
    gc.stage_pytest(gpu, time.monotonic() + 60, res := {})
    (argv, _), = gpu.calls
    assert "tests" not in argv and "tests/ops/test_ops.py" in argv
    assert set(res["files"]) <= set(argv) and all(f.startswith("tests/") for f in res["files"])
    assert "tests/tools/test_gpu_check.py" not in argv


def test_each_stage_is_in_the_json_while_it_runs(tmp_path, monkeypatch):
    gc = load_gpu_check(monkeypatch)
    args = SimpleNamespace(dry_run=True, out=str(tmp_path / "out"), work=str(tmp_path / "work"), budget_s=60)
    check = gc.Check(args)
    check.report["stages"]["env"] = {"status": "not run", "results": {}}
    seen = []
    gc.run_stage(check, "env", lambda c, deadline, res: seen.append(
        json.loads((tmp_path / "out" / "gpu_check.json").read_text())["stages"]["env"]["status"]) or "done")
    assert seen == ["running"]
    assert json.loads((tmp_path / "out" / "gpu_check.json").read_text())["stages"]["env"]["status"] == "ok"


def test_carried_wheels_install_without_pip_as_pip_would(tmp_path, monkeypatch):
    """The lent machine's python3 may have no pip: the wheels are unpacked as `pip install --target` would,
    and what they bring (ninja) is on the children's PATH."""
    gc = load_gpu_check(monkeypatch)
    folder = tmp_path / "wheels"
    folder.mkdir()
    wheel = make_wheel(folder)
    args = SimpleNamespace(dry_run=True, out=str(tmp_path / "out"), work=str(tmp_path / "pip"), budget_s=60,
                           wheels=str(folder))
    stage = gc.StageRun(gc.Check(args), "wheels")
    res = {}
    summary = gc.stage_wheels(stage, time.monotonic() + 60, res)
    assert "by pip" in summary and "of the 64 MiB" in summary
    env = stage.child_env()
    assert shutil.which("nm-probe-tool", path=env["PATH"]) == str(Path(res["site"]) / "bin" / "nm-probe-tool")

    def files(site: Path) -> set[str]:
        return {str(p.relative_to(site)) for p in site.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                and not p.parent.name.endswith(".dist-info")}

    bare = tmp_path / "bare"
    gc.unpack_wheel(wheel, bare)
    assert files(bare) == files(Path(res["site"]))
    for site in (bare, Path(res["site"])):
        run_env = dict(env, PYTHONPATH=str(site))
        assert subprocess.run([str(site / "bin" / "nm-probe-tool")], capture_output=True, text=True).stdout == \
            "tool-ok\n"
        assert subprocess.run([str(site / "bin" / "nm-probe")], capture_output=True, text=True,
                              env=run_env).stdout == "probe 0.1\n"

    # A Python without pip: the stage takes the unpacking path by itself.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "nopip")], check=True)
    out = subprocess.run([str(tmp_path / "nopip" / "bin" / "python"), str(SCRIPT), "--dry-run", "--stages", "wheels",
                          "--wheels", str(folder), "--out", str(tmp_path / "out2"), "--work", str(tmp_path / "w2")],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    wheels = json.loads((tmp_path / "out2" / "gpu_check.json").read_text())["stages"]["wheels"]
    assert wheels["status"] == "ok" and wheels["results"]["installer"] == "zipfile (no pip)", out.stdout


def test_the_tp_pp_check_needs_two_gpus(tmp_path, monkeypatch):
    gc = load_gpu_check(monkeypatch)
    with pytest.raises(gc.Skip, match="2 or more GPUs"):
        gc.stage_parallel(PretendGPU(gc, tmp_path, lambda argv: []), time.monotonic() + 60, {})


def test_a_failing_op_costs_the_kernel_benchmark_only_its_own_row(tmp_path, monkeypatch):
    """On a machine without megatron-core the RoPE comparison cannot import its reference: the other ops'
    rows are measured and written all the same."""
    monkeypatch.setitem(sys.modules, "megatron.core.models.common.embeddings.rope_utils", None)
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("bench_kernels", SCRIPT.parent / "bench_kernels.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = tmp_path / "bench.json"
    rc = bench.main(["--device", "cpu", "--scale", "0.01", "--iters", "1", "--no-compile", "--json", str(path)])
    report = json.loads(path.read_text())
    assert rc == 1 and report["finished"]
    assert {r["op"] for r in report["rows"]} == {"rmsnorm", "swiglu", "cross-entropy"}
    (error,) = report["errors"]
    assert error["op"] == "rope (q)" and error["column"] == "ours" and "ModuleNotFoundError" in error["error"]


def test_a_stopped_check_kills_its_commands_and_says_where_it_stopped(tmp_path):
    """Its commands run in their own sessions (so that a deadline ends all they started): a SIGTERM to the
    check itself (a device call's time limit) must end them too, or a hung one holds the GPU for the rerun."""
    out = tmp_path / "out"
    check = subprocess.Popen([sys.executable, str(SCRIPT), "--dry-run", "--stages", "env", "--out", str(out),
                              "--work", str(tmp_path / "work")], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    log, pid, give_up = out / "gpu_check.log", None, time.monotonic() + 60
    while pid is None and time.monotonic() < give_up:  # the env probe started (it takes seconds: torch)
        found = re.search(r"\(pid (\d+),", log.read_text()) if log.exists() else None
        pid = int(found.group(1)) if found else time.sleep(0.05)
    assert pid is not None
    check.send_signal(signal.SIGTERM)
    assert check.wait(timeout=30) == 128 + signal.SIGTERM, check.stdout.read()
    report = json.loads((out / "gpu_check.json").read_text())
    assert "signal 15" in report["stopped"] and report["stages"]["env"]["status"] == "running"

    def alive() -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    while alive() and time.monotonic() < give_up:
        time.sleep(0.05)
    assert not alive()
