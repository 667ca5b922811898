"""benchmarks/gpu_check.py: the dry run gives every stage a status, the targets are judged from the
benchmarks' numbers, and a stage that fails or runs out of time does not stop the others."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
STAGES = ["wheels", "env", "build", "pytest", "bench-kernels", "bench-train", "pretrain-tiny", "pretrain-1b",
          "parallel"]


def run(*args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def make_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel, to see the wheels stage install it for the later stages."""
    name, dist = "nm_gpu_check_probe", "nm_gpu_check_probe-0.1.dist-info"
    files = {f"{name}/__init__.py": "VERSION = '0.1'\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{dist}/RECORD"])
    path = folder / f"{name}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
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
               "xent_extra": {"ours": 0.001, "eager": 5.0}, "competitors": {"liger-kernel": "0.8.5"}}
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
        self.args = SimpleNamespace(keep_work=False, wheels=None)
        self.env_info = {"gpus": [{"name": "NVIDIA H200", "capability": "9.0"}], "cpus": 16,
                         "optional": {"transformer-engine": "2.8.0"}}

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


def test_the_gpu_pretraining_saves_at_15_and_resumes_to_30(tmp_path, monkeypatch):
    gc = load_gpu_check(monkeypatch)

    def answer(argv):
        run_dir = Path(next(a for a in argv if a.startswith("--logging.run_dir=")).split("=", 1)[1])
        steps = int(next(a for a in argv if a.startswith("--schedule.train_steps=")).split("=")[1])
        first = steps == 15
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "metrics.jsonl", "a") as f:
            for step in range(1 if first else 16, steps + 1):
                f.write(json.dumps({"step": step, "loss": 10 - step / 10, "tokens_per_s": 5e4, "mfu": 0.3}) + "\n")
        if first:
            return ["model: 1,498,000,000 parameters (native spec), vocab 128256",
                    "saved checkpoint c/iter_0000015 in 12.5s"]
        return ["resumed from c/iter_0000015 at step 15 (60 samples consumed) in 8.0s"]

    gpu = PretendGPU(gc, tmp_path, answer)
    summary = gc.stage_pretrain(gpu, time.monotonic() + 200, res := {}, "1b")
    first, second = (argv for argv, _ in gpu.calls)
    assert "--precision=bf16" in first and "--schedule.micro_batch_size=1" in first
    assert "--checkpoint.save_at_end=true" in first and "--checkpoint.save_at_end=false" in second
    assert res["resumed_at"] == 15 and res["steps"] == 30 and res["spec"] == "native"
    assert res["save_s"] == 12.5 and res["load_s"] == 8.0 and res["mfu"] == 0.3
    assert "resumed at 15" in summary


def test_the_tp_pp_check_needs_two_gpus(tmp_path, monkeypatch):
    gc = load_gpu_check(monkeypatch)
    with pytest.raises(gc.Skip, match="2 or more GPUs"):
        gc.stage_parallel(PretendGPU(gc, tmp_path, lambda argv: []), time.monotonic() + 60, {})
