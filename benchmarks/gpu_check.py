#!/usr/bin/env python3
"""Check and measure every GPU path in one command (`make gpu-check`; docs/kernels.md, "GPU check").

On a machine with one or more NVIDIA GPUs and a CUDA build of torch it installs carried wheels
(--wheels; with pip, or unpacked without it), reports the environment (transformer-engine,
Liger-Kernel, vLLM, flash-attn: used when importable, else "absent"; nvcc, ninja, a C++ compiler),
builds the CUDA extension (NM_BUILD_EXT=1, in place; refused in one line without a matching nvcc),
runs the gpu tests, 30 bf16 steps of the tiny model through pretrain_arabic.py with a checkpoint
save at step 15 and a resume, 20 steps of the ~1B model (no save), then benchmarks/bench_kernels.py
(Llama-3-8B shapes) and benchmarks/bench_train.py (the ~1B preset: local, native, and te when
installed), and with 2 or more GPUs a TP=2 and a PP=2 loss-equality check against TP=1. Each stage
has a time budget inside --budget-s (default 470 s); a stage that fails or runs out of time is
recorded (status, the last lines of its output) and the next one runs. It ends with one table, and
writes OUT/gpu_check.json (as each stage starts and ends) and OUT/gpu_check.log, OUT being --out,
else $OUT, else ./gpu_check.

--dry-run checks this script on a CPU in about a minute, with stand-ins: the build command is
checked but not run, pytest only collects the gpu tests, the benchmarks and the training runs
are tiny, the 1B config is only validated, the TP/PP check uses 2 gloo ranks. The JSON says
dry_run and no target is judged. CI runs it (tests/tools/test_gpu_check.py), and in a venv with
only the lent machine's packages (benchmarks/gpu_dry_run.sh).

    python3 benchmarks/gpu_check.py --fetch-wheels .whl            # here: the wheels to carry
    python3 benchmarks/gpu_check.py --wheels .whl --out "$OUT"    # the GPU machine
    python benchmarks/gpu_check.py --dry-run --out /tmp/gc        # anywhere

Only the standard library is imported here: the wheels may be what brings megatron-core, so
everything else runs in child processes.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime
import glob
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

from presets import PRESETS  # benchmarks/presets.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "examples" / "configs" / "tiny_cpu.yaml")
TAIL_LINES = 30
MIN_STAGE_S = 15  # a stage with less time than this left is not started (status timeout)

# Stage caps in seconds (GPU, dry run). Their sum exceeds the budget on purpose: a stage that
# finishes early leaves its time to the later ones, and the last stages get what is left. The order puts
# the ~1B training run before the sweeps, so that it gets its time whatever they take: on one H100-class
# GPU about 5 (wheels) + 10 (env) + 60-150 (build, parallel with ninja; serial without) + 60 (pytest) +
# 40 (pretrain-tiny) + 90 (pretrain-1b) leaves 100 for bench-kernels and the rest of the 470 s for bench-train.
# The dry run's caps are several times what a 2-core machine needs, for when other work shares it.
CAPS = {"wheels": (60, 45), "env": (60, 45), "build": (180, 45), "pytest": (90, 60),
        "pretrain-tiny": (60, 90), "pretrain-1b": (120, 30), "bench-kernels": (100, 60),
        "bench-train": (150, 60), "parallel": (150, 120)}
CARRY_LIMIT_MIB = 64  # what the lent machine's call carries, the working tree included

# The wheels the lent GPU machine needs carried (docs/kernels.md): what its image (python3.12, CUDA torch, triton,
# transformers, sentencepiece, tokenizers, pyarrow, pytest) lacks of what the check's stages import. Pinned: one
# version each, the ones the tests run with here. `--fetch-wheels DIR` downloads them.
CARRY = [("megatron-core==0.16.1", "the trainer's model, parallel layers and checkpoints (setup.py's floor)"),
         ("psutil==7.2.2", "megatron-core's checkpoint writer: without it the save raises in a child and hangs"),
         ("ninja==1.13.2", "torch builds the extension in parallel with it (serially without)"),
         ("pycld2==0.42", "language identification (native_megatron.data.langid), imported by the preprocessing"),
         ("zstandard==0.25.0", "reading .zst corpora (native_megatron.data.readers)"),
         ("xxhash==4.1.0", "work-file checksums (native_megatron.data.work), imported by every data stage"),
         ("ftfy==6.3.1", "mojibake repair in cleaning"), ("wcwidth==0.9.5", "ftfy's one dependency"),
         ("httpx==0.29.0", "the OpenAI-compatible client, imported by the rewriting pipeline the gpu tests run"),
         ("httpcore==1.0.9", "httpx's transport"), ("certifi==2026.10.19.post1", "httpx's CA bundle"),
         ("tenacity==9.2.1", "the client's retries"),
         ("pytest-timeout==2.4.0", "pyproject's `timeout = 600` per test"),
         ("liger-kernel==0.8.5", "the kernel benchmark's competitor (needs triton: on the device only)")]

OPTIONAL = [("transformer-engine", "transformer_engine", ["transformer-engine", "transformer_engine",
                                                          "transformer-engine-cu12", "transformer_engine_torch"]),
            ("Liger-Kernel", "liger_kernel", ["liger-kernel", "liger_kernel"]),
            ("vLLM", "vllm", ["vllm"]),
            ("flash-attn", "flash_attn", ["flash-attn", "flash_attn"])]
# What the check's stages import (setup.py's install_requires less tensorboard, off in every run here, and
# datasketch, used by dedup alone, which would bring scipy's 35 MB), as (package, import name, needed off the GPU
# too): the env stage fails when one is missing, which is what a machine without network needs carried as wheels.
# triton comes with CUDA torch; the dry run's CPU torch runs without it (no torch.compile, no Liger).
NEEDED = [("megatron-core", "megatron.core", True), ("sentencepiece", "sentencepiece", True),
          ("tokenizers", "tokenizers", True), ("numpy", "numpy", True), ("pyyaml", "yaml", True),
          ("tqdm", "tqdm", True), ("pycld2", "pycld2", True), ("ftfy", "ftfy", True), ("pyarrow", "pyarrow", True),
          ("zstandard", "zstandard", True), ("xxhash", "xxhash", True), ("psutil", "psutil", True),
          ("httpx", "httpx", True),
          ("tenacity", "tenacity", True), ("transformers", "transformers", True), ("pytest", "pytest", True),
          ("pytest-timeout", "pytest_timeout", True), ("triton", "triton", False)]

# Run in a child: what this Python and its torch can do, as one JSON line.
PROBE = r"""
import importlib.metadata as md, importlib.util, json, os, re, shutil, subprocess, sys
optional, needed = json.loads(sys.argv[1]), json.loads(sys.argv[2])
def version(module, dists):
    try:
        if importlib.util.find_spec(module) is None:
            return "absent"
    except (ImportError, ValueError):
        return "absent"
    for d in dists:
        try:
            return md.version(d)
        except md.PackageNotFoundError:
            pass
    return "present"
info = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
import torch
info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
n = torch.cuda.device_count() if info["cuda_available"] else 0
info["gpus"] = [{"name": torch.cuda.get_device_name(i), "capability": "%d.%d" % torch.cuda.get_device_capability(i),
                 "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)} for i in range(n)]
from torch.utils.cpp_extension import CUDA_HOME
info["cuda_home"] = CUDA_HOME
nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else shutil.which("nvcc")
info["nvcc"] = info["nvcc_version"] = None
if nvcc and os.path.exists(nvcc):
    text = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    info["nvcc"] = text.strip().splitlines()[-1] if text.strip() else nvcc
    found = re.search(r"release (\d+\.\d+)", text)
    info["nvcc_version"] = found.group(1) if found else None
info["ninja"] = shutil.which("ninja")
# torch's extension build runs $CXX, else c++ (and nvcc's host compiler is the same one).
info["cxx"] = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
if shutil.which("nvidia-smi"):  # a read-only query
    q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm",
                        "--format=csv,noheader"], capture_output=True, text=True)
    info["nvidia_smi"] = q.stdout.strip().splitlines()
info["optional"] = {label: version(module, dists) for label, module, dists in optional}
try:
    from native_megatron.ops import describe
    info["ops"] = describe()
except Exception as exc:
    info["ops"] = f"native_megatron.ops does not import: {type(exc).__name__}: {exc}"
info["needed"] = {label: version(module, [label]) for label, module, _ in needed}
print(json.dumps(info))
"""

VERIFY_EXT = ("import json; from native_megatron.ops import describe, extension_available; "
              "print(json.dumps({'describe': describe(), 'built': extension_available(), "
              "'cuda': extension_available('cuda')}))")


class Command:
    """One child process's outcome: exit status, seconds, whether it ran out of time, its output lines."""

    def __init__(self, argv: list[str], rc: int | None, seconds: float, timed_out: bool, lines: list[str]):
        self.argv, self.rc, self.seconds, self.timed_out, self.lines = argv, rc, seconds, timed_out, lines

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out

    def record(self) -> dict:
        return {"argv": shown(self.argv), "rc": self.rc, "seconds": round(self.seconds, 1),
                "timed_out": self.timed_out}


def shown(argv: list[str]) -> str:
    """The command line as the log shows it: an inline program is named by its first line."""
    return " ".join(f"'{a.strip().splitlines()[0]} ...'" if "\n" in a.strip() else a for a in argv)


class StageError(Exception):
    """A stage could not do its job; the message is the table's one line for it."""


class Skip(Exception):
    """A stage that does not apply here (no --wheels, one GPU for the TP/PP check)."""


class Check:
    """The run: options, the log, the children's environment, what each stage found."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.dry = args, args.dry_run
        self.out = Path(args.out or os.environ.get("OUT") or "gpu_check").resolve()
        self.work = Path(args.work).resolve() if args.work else ROOT / "runs" / "gpu_check"
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = open(self.out / "gpu_check.log", "w", encoding="utf-8")
        self.started = time.monotonic()
        self.deadline = self.started + args.budget_s
        self.pythonpath = [str(ROOT)]
        self.path: list[str] = []  # folders put before $PATH for the children
        self.env_info: dict = {}
        # The log and the JSON, when dry-run stages run side by side; re-entrant for the SIGTERM handler.
        self.lock = threading.RLock()
        self.children: set[subprocess.Popen] = set()  # running now: killed if the check itself is stopped
        self.stopping = False
        self.report = {"dry_run": self.dry, "started": datetime.datetime.now().isoformat(timespec="seconds"),
                       "finished": False, "budget_s": args.budget_s, "host": platform.node(),
                       "python": sys.executable, "argv": sys.argv[1:], "out": str(self.out), "work": str(self.work),
                       "env": self.env_info, "stages": {}, "targets": []}

    @property
    def gpus(self) -> int:
        return len(self.env_info.get("gpus", []))

    def child_env(self, extra: dict | None = None) -> dict:
        env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
        env["PYTHONPATH"] = os.pathsep.join(self.pythonpath + [p for p in [env.get("PYTHONPATH")] if p])
        # ninja (carried in the wheels' bin/, or put beside this Python by pip) for the extension build.
        env["PATH"] = os.pathsep.join(self.path + [str(Path(sys.executable).parent), env.get("PATH", "")])
        if self.dry:
            env.setdefault("OMP_NUM_THREADS", "1")
        env.update(extra or {})
        return env

    def log_line(self, stage: str, text: str) -> None:
        with self.lock:
            self.log.write(f"[{stage}] {text}\n")
            self.log.flush()

    def write_json(self) -> None:
        with self.lock:
            self.report["wall_s"] = round(time.monotonic() - self.started, 1)
            tmp = self.out / "gpu_check.json.partial"
            tmp.write_text(json.dumps(self.report, indent=1, default=str))
            tmp.replace(self.out / "gpu_check.json")


class StageRun:
    """One stage's view of the check: its own commands, its lines tagged with its name in the shared log;
    everything else (options, env_info, work, ...) is the check's."""

    def __init__(self, check: Check, name: str):
        self.check, self.name, self.commands = check, name, []

    def __getattr__(self, attr: str):
        return getattr(self.check, attr)

    def sh(self, argv: list[str], deadline: float, extra_env: dict | None = None) -> Command:
        """Run ``argv`` from the repository root until it ends or ``deadline`` passes; its output goes to the log."""
        if self.stopping:
            raise StageError("the check was stopped")
        timeout = max(1.0, deadline - time.monotonic())
        lines: collections.deque[str] = collections.deque(maxlen=4000)
        start = time.monotonic()
        proc = subprocess.Popen(argv, cwd=ROOT, env=self.child_env(extra_env), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
        self.children.add(proc)
        self.log_line(self.name, f"$ {shown(argv)}    (pid {proc.pid}, at most {timeout:.0f}s)")

        def pump() -> None:
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                self.log_line(self.name, lines[-1])

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            stop(proc)
        self.children.discard(proc)
        reader.join(timeout=10)
        seconds = time.monotonic() - start
        self.log_line(self.name, f"exit {proc.returncode}{', out of time' if timed_out else ''} after {seconds:.1f}s")
        self.commands.append(Command(argv, proc.returncode, seconds, timed_out, list(lines)))
        return self.commands[-1]


def stop_on_signal(c: Check, signum: int, _frame) -> None:
    """SIGTERM or SIGINT (a device call's time limit, ^C): the children run in their own sessions, so nothing
    else ends them; kill them, record where the check stopped, and exit without waiting for any stage."""
    c.stopping = True
    for proc in list(c.children):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    c.report["stopped"] = f"signal {signum} after {time.monotonic() - c.started:.0f}s; its commands were killed"
    c.write_json()
    print(f"gpu_check: stopped by signal {signum}; {c.out / 'gpu_check.json'} has what it finished", flush=True)
    os._exit(128 + signum)


def stop(proc: subprocess.Popen) -> None:
    """End a child and everything it started (its own process group): SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            pass


def require(cmd: Command, what: str) -> Command:
    if cmd.timed_out:
        raise TimeoutError(f"{what}: out of time after {cmd.seconds:.0f}s")
    if cmd.rc != 0:
        last = next((line for line in reversed(cmd.lines) if line.strip()), "")
        raise StageError(f"{what}: exit {cmd.rc}: {last[:200]}")
    return cmd


def last_json_line(cmd: Command) -> dict:
    for line in reversed(cmd.lines):
        if line.startswith("{"):
            return json.loads(line)
    raise StageError("no JSON line in the output")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StageError(f"{path.name}: {exc}") from exc


# ---------------------------------------------------------------------------------------------- stages
# Each takes (its StageRun, its deadline, its results dict to fill) and returns the table's one-line
# summary; it raises StageError (failed), TimeoutError (out of time) or Skip (not applicable here).

def stage_wheels(c: StageRun, deadline: float, res: dict) -> str:
    if not c.args.wheels:
        raise Skip("no --wheels given: the packages already installed are used")
    wheels = sorted(glob.glob(os.path.join(c.args.wheels, "*.whl")))
    if not wheels:
        raise StageError(f"no .whl files in {c.args.wheels}")
    site = c.work / "site"
    shutil.rmtree(site, ignore_errors=True)
    res["wheels"] = [os.path.basename(w) for w in wheels]
    res["mib"] = round(sum(os.path.getsize(w) for w in wheels) / 2**20, 1)
    if importlib.util.find_spec("pip") is not None:
        res["installer"] = "pip"
        require(c.sh([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                      "--no-cache-dir", "--disable-pip-version-check", "--target", str(site), *wheels], deadline),
                "pip install")
    else:  # the machine's python3 has no pip: unpack them here (the standard library is all this script has)
        res["installer"] = "zipfile (no pip)"
        for wheel in wheels:
            unpack_wheel(Path(wheel), site)
        c.log_line(c.name, f"no pip: {len(wheels)} wheels unpacked into {site}")
    c.pythonpath.append(str(site))
    c.path.append(str(site / "bin"))  # console scripts and the wheels' own programs (ninja)
    res["site"] = str(site)
    return (f"{len(wheels)} wheels ({res['mib']} of the {CARRY_LIMIT_MIB} MiB a call carries) into {site} by "
            f"{res['installer']}: " + ", ".join(w.split("-")[0] + " " + w.split("-")[1] for w in res["wheels"]))


def unpack_wheel(wheel: Path, site: Path) -> None:
    """Install ``wheel`` into ``site`` as `pip install --target` would, without pip: its files (with their
    executable bits), its .data folder's libraries into ``site`` and its scripts into ``site/bin``, and a
    launcher in ``site/bin`` for each console script."""
    site.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            target = Path(z.extract(info, site))
            mode = info.external_attr >> 16
            if stat.S_ISREG(mode) and mode & 0o111:  # as pip reads a zip entry's mode
                target.chmod(0o755)
    for data in site.glob("*.data"):
        for kind in data.iterdir():
            dest = site / "bin" if kind.name == "scripts" else site
            if kind.name not in ("scripts", "purelib", "platlib"):
                continue  # headers and data files: nothing here uses them
            shutil.copytree(kind, dest, dirs_exist_ok=True)  # merged, as pip does
        shutil.rmtree(data)
    for entry_points in site.glob("*.dist-info/entry_points.txt"):
        section = None
        for line in entry_points.read_text().splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line.strip("[]")
            elif section == "console_scripts" and "=" in line:
                name, target = (part.strip() for part in line.split("=", 1))
                module, _, func = target.split("[")[0].strip().partition(":")  # "[extra]": not needed here
                script = site / "bin" / name
                script.parent.mkdir(exist_ok=True)
                script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {func.split('.')[0]}\n"
                                  f"sys.exit({func}())\n")
                script.chmod(0o755)


def fetch_wheels(dest: str, python_version: str) -> int:
    """Download CARRY's wheels into ``dest`` for the lent machine's Python (or this one's: "host"), with pip."""
    argv = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "-d", dest]
    if python_version != "host":
        argv += ["--python-version", python_version, "--implementation", "cp"]
        argv += [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
                                             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_12_x86_64",
                                             "manylinux2010_x86_64", "manylinux1_x86_64")]
    rc = subprocess.run(argv + [req for req, _ in CARRY]).returncode
    if rc:
        print(f"pip download failed (exit {rc}): see its message above", file=sys.stderr)
        return rc
    total = 0
    for req, why in CARRY:
        name = req.split("==")[0].replace("-", "_").lower()
        size = sum(os.path.getsize(w) for w in glob.glob(os.path.join(dest, "*.whl"))
                   if os.path.basename(w).lower().startswith(name + "-"))
        total += size
        print(f"{req:32} {size / 2**20:6.2f} MiB  {why}")
    print(f"total {total / 2**20:.1f} MiB of the {CARRY_LIMIT_MIB} MiB a device call carries (the tree included)")
    return 0 if total < CARRY_LIMIT_MIB * 2**20 else 1


def stage_env(c: StageRun, deadline: float, res: dict) -> str:
    cmd = require(c.sh([sys.executable, "-c", PROBE, json.dumps(OPTIONAL), json.dumps(NEEDED)], deadline), "probe")
    c.env_info.update(last_json_line(cmd))
    info = c.env_info
    res.update(info)
    off_gpu = {label for label, _, anywhere in NEEDED if anywhere}
    missing = [k for k, v in info["needed"].items() if v == "absent" and (not c.dry or k in off_gpu)]
    opt = ", ".join(f"{k} {v}" for k, v in info["optional"].items())
    gpus = collections.Counter(f"{g['name']} (sm_{g['capability'].replace('.', '')})" for g in info["gpus"])
    where = ", ".join(f"{n}x {name}" for name, n in gpus.items()) or "no CUDA GPU"
    tools = f"nvcc {info['nvcc_version'] or 'absent'}, ninja {'yes' if info['ninja'] else 'absent'}, " \
            f"C++ compiler {info['cxx'] or 'absent'}"
    line = f"{where}; torch {info['torch']} (CUDA {info['torch_cuda']}); {tools}; {opt}; " \
           f"ops before the build: {info['ops']}"
    if not c.dry and not info["gpus"]:
        raise StageError(line + ": torch sees no CUDA GPU; on a CPU use --dry-run")
    if missing:  # the stages that import them fail later; this says why, and what to carry
        raise StageError(line + "; missing: " + ", ".join(missing) + " (carry their wheels: docs/kernels.md)")
    return line


def gpu_only(c: StageRun) -> None:
    if not c.dry and not c.gpus:
        raise Skip("needs a CUDA GPU (see env)")


def stage_build(c: StageRun, deadline: float, res: dict) -> str:
    gpu_only(c)
    arches = sorted({g["capability"] for g in c.env_info.get("gpus", [])})
    env = {"NM_BUILD_EXT": "1", "MAX_JOBS": str(c.env_info.get("cpus") or os.cpu_count() or 1)}
    if arches and "TORCH_CUDA_ARCH_LIST" not in os.environ:
        env["TORCH_CUDA_ARCH_LIST"] = ";".join(arches)  # only this machine's chips: half the compile time
    build = [sys.executable, "setup.py", "build_ext", "--inplace"]
    res["command"] = " ".join(f"{k}={v}" for k, v in env.items()) + " " + " ".join(build)
    if c.dry:  # setup.py decides and declares the extension, without compiling it
        require(c.sh(build[:3] + ["--help"], deadline, env), "setup.py build_ext --help")
        return f"dry run: build command checked: {res['command']}"
    cannot = cannot_build_cuda(c.env_info)
    if cannot:  # else setup.py builds CPU kernels only, and the benchmark would time the torch reference as ours
        raise StageError(f"{cannot}: no CUDA kernels, so every kernel target is n/a")
    require(c.sh(build, deadline, env), "build")
    res.update(last_json_line(require(c.sh([sys.executable, "-c", VERIFY_EXT], deadline), "import")))
    if not res["cuda"]:
        raise StageError(f"built, but without CUDA kernels: {res['describe']}")
    how = "in parallel (ninja)" if c.env_info.get("ninja") else "serially (no ninja)"
    return f"CUDA kernels for {', '.join('sm_' + a.replace('.', '') for a in arches)}, {how}: {res['describe']}"


def cannot_build_cuda(info: dict) -> str | None:
    """Why this machine cannot build the CUDA kernels (one line), or None."""
    torch_cuda = info.get("torch_cuda")
    if not torch_cuda:
        return f"torch {info.get('torch')} is not a CUDA build"
    if not info.get("nvcc_version"):
        return (f"no nvcc (CUDA_HOME: {info.get('cuda_home')}): install the CUDA {torch_cuda.split('.')[0]}.x "
                "toolkit torch was built with, or set CUDA_HOME to it")
    if info["nvcc_version"].split(".")[0] != torch_cuda.split(".")[0]:
        return (f"nvcc {info['nvcc_version']} ({info.get('cuda_home')}) does not match torch's CUDA {torch_cuda}: "
                f"torch refuses to build with another major version; set CUDA_HOME to a {torch_cuda.split('.')[0]}.x "
                "toolkit")
    if not info.get("cxx"):
        return "no host C++ compiler (c++, g++ or $CXX) for torch's extension build"
    return None


def stage_pytest(c: StageRun, deadline: float, res: dict) -> str:
    gpu_only(c)
    files = gpu_test_files()
    res["files"] = files
    if not files:
        raise StageError("no test file marks a test `gpu`")
    # Only the files that hold gpu tests: collecting all of tests/ imports what the others need (vLLM's client,
    # the evaluation's plots), and a missing one there would fail this stage with every gpu test passing.
    base = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", *files]
    if c.dry:
        cmd = require(c.sh(base + ["--collect-only", "-q"], deadline), "pytest --collect-only")
        m = next((re.search(r"(\d+)(?:/(\d+))? tests? collected", line) for line in reversed(cmd.lines)
                  if "collected" in line), None)
        res["collected"] = int(m.group(1)) if m else 0
        if not res["collected"]:
            raise StageError("no gpu tests collected")
        return f"dry run: {res['collected']} gpu tests collected"
    xml = c.work / "pytest_gpu.xml"
    cmd = c.sh(base + ["-q", "--continue-on-collection-errors", f"--junitxml={xml}"], deadline)
    if cmd.timed_out:
        raise TimeoutError(f"pytest: out of time after {cmd.seconds:.0f}s")
    res.update(junit_counts(xml))
    line = (f"{res.get('passed', 0)} passed, {res.get('failed', 0)} failed, {res.get('errors', 0)} errors, "
            f"{res.get('skipped', 0)} skipped")
    if cmd.rc != 0:
        raise StageError(line + ("; " + ", ".join(res.get("failing", []))[:300] if res.get("failing") else
                                 f"; exit {cmd.rc}"))
    return line


def gpu_test_files() -> list[str]:
    """The test files that mark a test `gpu` (pytest.mark.gpu, on a test, a class or the module)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if re.search(r"\bmark\.gpu\b", p.read_text(encoding="utf-8")))


def junit_counts(path: Path) -> dict:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failing = [f"{case.get('classname')}::{case.get('name')}" for s in suites for case in s.iter("testcase")
               if case.find("failure") is not None or case.find("error") is not None]
    return {"passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"], "failed": n["failures"],
            "errors": n["errors"], "skipped": n["skipped"], "failing": failing}


def stage_bench_kernels(c: StageRun, deadline: float, res: dict) -> str:
    gpu_only(c)
    path = c.work / "bench_kernels.json"
    path.unlink(missing_ok=True)
    argv = [sys.executable, "benchmarks/bench_kernels.py", "--json", str(path)]
    if c.dry:
        argv += ["--device", "cpu", "--scale", "0.01", "--iters", "2", "--no-compile"]
    cmd = c.sh(argv, deadline)
    if path.exists():  # written after each op: a failure or a timeout keeps the rows measured before it
        res.update(read_json(path))
    rows = [r for r in res.get("rows", []) if r.get("bw_copy") is not None]
    failed = "; ".join(f"{e['op']}: {e['error']}"[:160] for e in res.get("errors", []) if e["column"] == "ours")
    line = "no op measured"
    if rows:
        worst, best = min(rows, key=lambda r: r["bw_copy"]), max(rows, key=lambda r: r["bw_copy"])
        line = (f"ours: {res.get('ours', '?')}; copy {res['copy_gbps']:.0f} GB/s; bw/copy from "
                f"{worst['bw_copy']:.2f} ({worst['op']} {worst['pass']}) to {best['bw_copy']:.2f}; " +
                ", ".join(f"{k} {v}" for k, v in res["competitors"].items()))
    if cmd.timed_out:
        raise TimeoutError(f"out of time after {cmd.seconds:.0f}s; {line}")
    if failed:  # the other ops' rows stand; the stage does not
        raise StageError(f"{line}; failed: {failed}")
    require(cmd, "bench_kernels.py")
    if not rows:
        raise StageError(line)
    return line


def stage_bench_train(c: StageRun, deadline: float, res: dict) -> str:
    gpu_only(c)
    path = c.work / "bench_train.json"
    path.unlink(missing_ok=True)
    built = c.report["stages"].get("build", {}).get("results", {})
    # Without CUDA kernels the native spec runs the torch reference ops: not a figure of ours.
    specs = ["local", "native"] if c.dry or built.get("cuda") else ["local"]
    if not c.dry and c.env_info.get("optional", {}).get("transformer-engine", "absent") != "absent":
        specs.append("te")
    argv = [sys.executable, "benchmarks/bench_train.py", "--json", str(path), "--specs", ",".join(specs)]
    if c.dry:
        argv += ["--preset", "tiny", "--micro-batches", "2", "--steps", "2", "--warmup", "0"]
    else:
        # Leave a started measurement (model build, warm-up, steps) time to finish inside the stage.
        budget = max(10.0, deadline - time.monotonic() - 45)
        argv += ["--preset", "1b", "--micro-batches", "1,2,4", "--steps", "4", "--warmup", "2",
                 "--budget-s", f"{budget:.0f}"]
    cmd = c.sh(argv, deadline)
    if path.exists():
        res.update(read_json(path))
    rows = res.get("rows", [])
    best = {}
    for r in rows:
        if r["spec"] not in best or r["tok_s"] > best[r["spec"]]["tok_s"]:
            best[r["spec"]] = r
    line = "; ".join(f"{s} {r['tok_s']:,.0f} tok/s {r['tflops']:.1f} TFLOP/s MFU {pct(r['mfu'])} (mbs {r['mbs']})"
                     for s, r in best.items())
    if res.get("errors"):
        line += "; errors: " + "; ".join(f"{e['spec']}: {e['error']}"[:200] for e in res["errors"])
    require(cmd, "bench_train.py")
    if not rows:
        raise StageError("no measurement: " + line)
    return line


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def pretrain_args(run_dir: Path, preset: str, dry: bool) -> list[str]:
    args = [sys.executable, "pretrain_arabic.py", "--config", TINY, "--data.mock=true", "--data.paths=[]",
            f"--logging.run_dir={run_dir}", "--logging.log_interval=1", "--logging.tensorboard=false",
            "--checkpoint.save_interval=0"]
    if preset == "1b":
        # One sample per micro batch: the local spec's attention holds [heads, s, s] scores per layer,
        # and at sequence 4096 two samples do not fit an 80 GB H100 beside the optimizer states.
        args += PRESETS["1b"] + ["--schedule.micro_batch_size=1", "--schedule.global_batch_size=4"]
    elif not dry:
        args += ["--precision=bf16"]
    if dry:
        args += ["--schedule.warmup_steps=1"]  # below the dry run's 2 steps
    return args


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def stage_pretrain(c: StageRun, deadline: float, res: dict, preset: str) -> str:
    gpu_only(c)
    run_dir = c.work / f"pretrain_{preset}"
    shutil.rmtree(run_dir, ignore_errors=True)
    base = pretrain_args(run_dir, preset, c.dry)
    if c.dry and preset == "1b":  # the 1B settings are checked (they load and validate), not trained on a CPU
        require(c.sh(base + ["--schedule.train_steps=2", "--print-config"], deadline), "--print-config")
        return "dry run: the 1B settings load and validate (pretrain_arabic.py --print-config)"
    if preset == "1b":
        # No save: its ~20 GB would take tens of seconds of the stage's time, and the tiny run checks the save
        # and the resume. This is the training step's own figure, with nothing else on the machine.
        run = require(c.sh(base + [f"--schedule.train_steps={STEPS_1B}", "--checkpoint.save_at_end=false"],
                           deadline), f"steps 1-{STEPS_1B}")
        res.update(training_results(run_dir, run, None, 0, STEPS_1B))
        return (f"{res['spec']} spec, bf16, {STEPS_1B} steps (no save); loss {res['first_loss']:.3f} -> "
                f"{res['last_loss']:.3f}; {res['tokens_per_s']:,.0f} tok/s, MFU {pct(res['mfu'])}, "
                f"{res['memory_gib']:.1f} GiB")
    if c.env_info.get("needed", {}).get("psutil") == "absent":
        # megatron-core's checkpoint writer raises in a child process without it, and the save then hangs
        # with SIGTERM ignored until the stage's cap: say so now instead.
        raise StageError("psutil is missing: megatron-core's checkpoint save hangs without it; carry its wheel "
                         "(docs/kernels.md)")
    half, total = (2, 4) if c.dry else (15, 30)
    first = require(c.sh(base + [f"--schedule.train_steps={half}", "--checkpoint.save_at_end=true"], deadline),
                    f"steps 1-{half}")
    second = require(c.sh(base + [f"--schedule.train_steps={total}", "--checkpoint.save_at_end=false"], deadline),
                     f"resume to step {total}")
    res.update(training_results(run_dir, first, second, half, total))
    res["precision"] = "fp32" if c.dry else "bf16"
    return (f"{res['spec']} spec, {res['precision']}: steps 1-{half}, saved ({res['save_s']}s), resumed at "
            f"{res['resumed_at']} ({res['load_s']}s) to {total}; loss {res['first_loss']:.3f} -> "
            f"{res['last_loss']:.3f}; {res['tokens_per_s']:,.0f} tok/s, MFU {pct(res['mfu'])}")


STEPS_1B = 20


def training_results(run_dir: Path, first: Command, second: Command | None, half: int, total: int) -> dict:
    """Losses, speed and memory from the run's metrics.jsonl; with ``second``, the save at ``half`` and the
    resume from it (``first`` ran steps 1..half, ``second`` half+1..total)."""
    rows = [r for r in read_metrics(run_dir) if "loss" in r]
    steps = [r["step"] for r in rows]
    if steps != list(range(1, total + 1)):
        raise StageError(f"expected steps 1..{total} once each{f' (a resume at {half})' if second else ''}, "
                         f"logged {steps}")
    bad = [r["step"] for r in rows if not math.isfinite(r["loss"])]
    if bad:
        raise StageError(f"loss not finite at steps {bad}")

    def grab(pattern: str, lines: list[str]) -> str | None:
        return next((m.group(1) for line in lines for m in [re.search(pattern, line)] if m), None)

    def seconds(pattern: str, lines: list[str]) -> float | None:
        found = grab(pattern, lines)
        return float(found) if found else None

    # The timed steps: the run's (or the resumed run's) first steps warm up (allocator, kernels' autotuning).
    later = rows[half + 1:] or rows[half:] if second else rows[min(3, total - 1):]
    out = {"steps": total, "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"],
           "spec": grab(r"\((\w+) spec\)", first.lines),
           "tokens_per_s": statistics.median(r["tokens_per_s"] for r in later),
           "mfu": statistics.median(r["mfu"] for r in later) if all(r.get("mfu") is not None for r in later)
           else None, "memory_gib": max(r.get("memory_gib", 0) for r in rows),
           "seconds": {"first": round(first.seconds, 1)}}
    if second is None:
        return out
    resumed = grab(r"resumed from \S+ at step (\d+)", second.lines)
    if resumed is None or int(resumed) != half:
        raise StageError(f"the second run did not resume at step {half} (resumed at {resumed})")
    out.update(resumed_at=int(resumed), save_s=seconds(r"saved checkpoint \S+ in ([\d.]+)s", first.lines),
               load_s=seconds(r"resumed from \S+ at step \d+ .* in ([\d.]+)s", second.lines))
    out["seconds"]["resumed"] = round(second.seconds, 1)
    return out


PARALLEL_TOL = 2e-4  # fp32: only the order of reductions differs (the training tests' tolerance)
PARALLEL = ["--data.mock=true", "--data.paths=[]", "--model.vocab_size=256", "--data.seq_length=32",
            "--schedule.micro_batch_size=2", "--schedule.global_batch_size=8", "--schedule.warmup_steps=1",
            "--schedule.eval_interval=0", "--checkpoint.save_interval=0", "--checkpoint.save_at_end=false",
            "--logging.log_interval=1", "--logging.tensorboard=false", "--precision=fp32"]


def stage_parallel(c: StageRun, deadline: float, res: dict) -> str:
    if not c.dry and c.gpus < 2:
        raise Skip(f"needs 2 or more GPUs (found {c.gpus})")
    steps = 3 if c.dry else 10
    root = c.work / "parallel"
    shutil.rmtree(root, ignore_errors=True)

    def train(name: str, nproc: int, *extra: str) -> dict[int, float]:
        launcher = ["-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--standalone"] \
            if nproc > 1 else []
        argv = [sys.executable, *launcher, "pretrain_arabic.py", "--config", TINY, *PARALLEL,
                f"--schedule.train_steps={steps}", f"--logging.run_dir={root / name}", *extra]
        require(c.sh(argv, deadline), name)
        return {r["step"]: r["loss"] for r in read_metrics(root / name) if "loss" in r}

    ref = train("tp1", 1, "--checkpoint.save_initial=true")
    init = f"--checkpoint.init_from={root / 'tp1' / 'checkpoints' / 'initial'}"
    res["tol"], res["losses"] = PARALLEL_TOL, {"tp1": ref}
    for name, layout in (("tp2", "--parallel.tensor=2"), ("pp2", "--parallel.pipeline=2")):
        got = train(name, 2, init, layout)
        res["losses"][name] = got
        if sorted(got) != sorted(ref):
            raise StageError(f"{name} logged steps {sorted(got)}, TP=1 {sorted(ref)}")
        res[f"{name}_max_diff"] = max(abs(got[s] - ref[s]) for s in ref)
    line = f"{steps} fp32 steps from the same weights: max |loss - TP=1 loss| " + ", ".join(
        f"{n.upper()} {res[f'{n}_max_diff']:.1e}" for n in ("tp2", "pp2")) + f" (tolerance {PARALLEL_TOL:.0e})"
    if c.dry:
        line = "dry run on gloo: " + line
    if max(res["tp2_max_diff"], res["pp2_max_diff"]) > PARALLEL_TOL:
        raise StageError(line)
    return line


# The ~1B training run comes before the sweeps: it is the figure the check is for, and gets its time whatever
# the sweeps take (see CAPS).
STAGES = [("wheels", stage_wheels), ("env", stage_env), ("build", stage_build), ("pytest", stage_pytest),
          ("pretrain-tiny", lambda c, d, r: stage_pretrain(c, d, r, "tiny")),
          ("pretrain-1b", lambda c, d, r: stage_pretrain(c, d, r, "1b")),
          ("bench-kernels", stage_bench_kernels), ("bench-train", stage_bench_train), ("parallel", stage_parallel)]


def run_stage(check: Check, name: str, fn) -> None:
    c = StageRun(check, name)
    cap = CAPS[name][1 if c.dry else 0]
    left = c.deadline - time.monotonic()
    entry = c.report["stages"][name]
    entry["budget_s"] = round(min(cap, max(left, 0)))
    entry["status"] = "running"
    c.write_json()  # a check cut short from outside shows which stage it was in
    start = time.monotonic()
    try:
        if left < MIN_STAGE_S:
            raise TimeoutError(f"not started: {max(left, 0):.0f}s of the {c.args.budget_s:.0f}s budget left")
        entry["summary"] = fn(c, start + min(cap, left), entry["results"])
        entry["status"] = "ok"
    except Skip as exc:
        entry["status"], entry["summary"] = "skipped", str(exc)
    except TimeoutError as exc:
        entry["status"], entry["summary"] = "timeout", str(exc)
    except StageError as exc:
        entry["status"], entry["summary"] = "failed", str(exc)
    except Exception as exc:  # noqa: BLE001  (a bug in one stage must not cost the others)
        entry["status"], entry["summary"] = "failed", f"{type(exc).__name__}: {exc}"
    entry["seconds"] = round(time.monotonic() - start, 1)
    entry["commands"] = [cmd.record() for cmd in c.commands]
    if c.commands and entry["status"] != "ok":
        entry["tail"] = c.commands[-1].lines[-TAIL_LINES:]
    print(f"[{name}] {entry['status']} in {entry['seconds']:.0f}s: {entry['summary']}", flush=True)
    c.write_json()


# ---------------------------------------------------------------------------------------------- targets

def judge(c: Check) -> list[dict]:
    """The issue's targets, each with what was measured; status met / missed / n/a (dry run: not judged)."""
    stages = c.report["stages"]
    kernels = stages.get("bench-kernels", {}).get("results", {})
    train = stages.get("bench-train", {}).get("results", {})
    rows = {(r["op"], r["pass"]): r for r in kernels.get("rows", [])}
    # Timings of the torch reference (no CUDA kernels built) say nothing of our kernels: judge none of them.
    reference = bool(kernels) and kernels.get("ours") != "CUDA kernels" and not c.dry
    out = []

    def target(name: str, value, ok: bool | None, measured: str) -> None:
        if reference and not name.startswith("~1B"):
            value, ok, measured = None, None, f"not judged: ours ran the {kernels.get('ours')}, not CUDA kernels"
        status = "n/a" if value is None or ok is None else ("met" if ok else "missed")
        if c.dry and status != "n/a":
            status = "dry-run"
        out.append({"target": name, "status": status, "value": value, "measured": measured})

    for op, label in (("rmsnorm", "RMSNorm"), ("swiglu", "SwiGLU"), ("rope (q)", "RoPE")):
        for p in ("fwd", "bwd"):
            r = rows.get((op, p), {})
            bw = r.get("bw_copy")
            extra = ", ".join(f"{k}/ours {v:.2f}" for k, v in r.get("ratio", {}).items() if v is not None)
            target(f"{label} {p} >= 0.90 of copy bandwidth", bw, None if bw is None else bw >= 0.90,
                   "-" if bw is None else f"{bw:.2f} ({r['ours_ms']:.3f} ms; {extra})")
    xe = kernels.get("xent_extra", {})
    ours = xe.get("ours")
    target("cross-entropy: < 1 logits-sized buffer beyond its gradient", ours, None if ours is None else ours < 1.0,
           "not measured off CUDA" if ours is None else
           "peak beyond logits and gradient, in logits-sized buffers: " +
           ", ".join(f"{k} {v:.3f}" for k, v in xe.items() if v is not None))
    vs = [(f"{op} {p}", col, ratio) for (op, p), r in rows.items() for col, ratio in r.get("ratio", {}).items()
          if col in ("te", "liger") and ratio is not None]
    slower = [f"{k} {col} {ratio:.2f}" for k, col, ratio in vs if ratio < 1.0]
    found = ", ".join(f"{k} {v}" for k, v in kernels.get("competitors", {}).items()) or "not measured"
    target("each kernel no slower than Liger / TE", len(vs) or None, not slower if vs else None,
           (f"{len(vs) - len(slower)} of {len(vs)} comparisons at least as fast" +
            (f"; slower: {', '.join(slower)}" if slower else "") if vs else f"nothing to compare: {found}"))
    mfus = [(r["mfu"], r["spec"], r["mbs"]) for r in train.get("rows", []) if r.get("mfu") is not None]
    run_1b = stages.get("pretrain-1b", {}).get("results", {})
    if run_1b.get("mfu") is not None:  # the training run itself, should the sweep not get to run
        mfus.append((run_1b["mfu"], f"{run_1b['spec']} in pretrain-1b", 1))
    best = max(mfus) if mfus else None
    target("~1B model MFU >= 45% (best spec)", best[0] if best else None, best[0] >= 0.45 if best else None,
           f"{pct(best[0])} ({best[1]}, mbs {best[2]})" if best else "no MFU measured (CPU, or no known peak)")
    return out


def print_table(c: Check) -> None:
    info = c.env_info
    rows = [(name, s["status"], f"{s['seconds']:.0f}", s["summary"]) for name, s in c.report["stages"].items()]
    rows += [("  " + t["target"], t["status"], "", t["measured"]) for t in c.report["targets"]]
    width = max(len(r[0]) for r in rows)
    title = "gpu_check" + (" (DRY RUN: CPU stand-ins, targets not judged)" if c.dry else "")
    print(f"\n{title}: {info.get('python', '?')} at {sys.executable}; torch {info.get('torch', '?')}")
    print(f"{'stage / target':{width}}  {'status':8} {'s':>5}  measured")
    print(f"{'-' * width}  {'-' * 8} {'-' * 5}  {'-' * 40}")
    for name, status, secs, text in rows:
        print(f"{name:{width}}  {status:8} {secs:>5}  {text}")
    print(f"total {c.report['wall_s']:.0f}s of a {c.args.budget_s:.0f}s budget; "
          f"{c.out / 'gpu_check.json'}, {c.out / 'gpu_check.log'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="docs/kernels.md, \"GPU check\", says what each stage does and "
                                       "how to run this on a lent GPU machine.")
    p.add_argument("--dry-run", action="store_true", help="check this script on a CPU with tiny stand-ins")
    p.add_argument("--out", default=None, help="where gpu_check.json and gpu_check.log go (default: $OUT, "
                                               "else ./gpu_check)")
    p.add_argument("--work", default=None, help="scratch: run directories, checkpoints (default runs/gpu_check)")
    p.add_argument("--wheels", default=os.environ.get("NM_WHEELS"),
                   help="install these wheels (a folder of .whl, $NM_WHEELS) offline before anything else")
    p.add_argument("--budget-s", type=float, default=None, help="wall-time budget (default 470; dry run 300)")
    p.add_argument("--stages", default=None, help=f"comma list, a subset of: {','.join(n for n, _ in STAGES)}")
    p.add_argument("--jobs", type=int, default=None,
                   help="dry run only: stages run side by side (default 2); on GPUs they run one at a time, "
                        "so that no stage's timings share the machine")
    p.add_argument("--fetch-wheels", default=None, metavar="DIR",
                   help="download the wheels the lent machine needs carried into DIR (pip, network), print each "
                        "one's size and reason and the total against the carry limit, and exit")
    p.add_argument("--python-version", default="3.12",
                   help="with --fetch-wheels: the lent machine's Python (default 3.12), or host for this one's")
    args = p.parse_args(argv)
    if args.fetch_wheels:
        return fetch_wheels(args.fetch_wheels, args.python_version)
    if args.jobs is None:
        args.jobs = 2 if args.dry_run else 1
    if args.jobs > 1 and not args.dry_run:
        p.error("--jobs above 1 is for --dry-run only: timings on a GPU need the machine to themselves")
    if args.budget_s is None:
        args.budget_s = 300.0 if args.dry_run else 470.0
    chosen = args.stages.split(",") if args.stages else [n for n, _ in STAGES]
    unknown = set(chosen) - {n for n, _ in STAGES}
    if unknown:
        p.error(f"unknown stages {sorted(unknown)}; choose from {[n for n, _ in STAGES]}")
    c = Check(args)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop_on_signal(c, signum, frame))
    todo = [(name, fn) for name, fn in STAGES if name in chosen or name == "env"]  # the others read what env found
    for name, _ in todo:
        c.report["stages"][name] = {"status": "not run", "seconds": 0.0, "budget_s": None, "summary": "",
                                    "commands": [], "tail": [], "results": {}}
    c.write_json()
    first = [st for st in todo if st[0] in ("wheels", "env")]  # what the later stages build on
    for name, fn in first:
        run_stage(c, name, fn)
    rest = [st for st in todo if st not in first]
    if args.jobs > 1:
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda st: run_stage(c, *st), rest))
    else:
        for name, fn in rest:
            run_stage(c, name, fn)
    c.report["targets"] = judge(c)
    c.report["finished"] = True
    c.write_json()
    print_table(c)
    c.log.close()
    return 0 if all(s["status"] in ("ok", "skipped") for s in c.report["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
