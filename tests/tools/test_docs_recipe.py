"""The docs as a user reads them: the paper cited by its authors, and docs/alignment.md's recipe run at toy size."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Liang et al., "Alignment at Pre-training! Towards Native Alignment for Arabic LLMs", NeurIPS 2024.
AUTHORS = ("Juhao Liang, Zhenyang Cai, Jianqing Zhu, Huang Huang, Kewei Zong, Bang An, Mosen Alharthi, Juncai He, "
           "Lian Zhang, Haizhou Li, Benyou Wang and Jinchao Xu")
WRONG = ", ".join(["An", "Wang", "Li"])      # the old citation, spelt so that this file does not hold it


def tracked_text_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        paths = [ROOT / n for n in names.splitlines()]
    except (OSError, subprocess.CalledProcessError):   # an exported tree without git
        paths = [p for p in ROOT.rglob("*") if ".git" not in p.parts and ".venv" not in p.parts]
    return [p for p in paths if p.is_file() and p.suffix in {".md", ".py", ".yaml", ".yml", ".sh", ".sbatch", ".txt"}]


def test_the_seed_paper_is_cited_by_its_authors():
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert AUTHORS in text and "NeurIPS 2024" in text
    assert "AceGPT-v2" in text and "LLaMA3-Tamed" in text       # the released models' two names
    cited = 0
    for path in tracked_text_files():
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for i, line in enumerate(lines):
            assert WRONG not in line, f"{path.relative_to(ROOT)}:{i + 1}: the first author is Juhao Liang"
            if "2412.03253" in line:
                cited += 1
                # An "et al." on the lines around the arXiv number follows the first author's name.
                near = " ".join(lines[max(0, i - 2):i + 3])
                for first in re.findall(r"([A-Z][a-z]+)(?:,? [A-Z][a-z]+)*,? et al\.", near):
                    assert first == "Liang", f"{path.relative_to(ROOT)}:{i + 1}: cites {first} et al."
    assert cited >= 3


# ---- docs/alignment.md's recipe, run end to end at toy size -----------------------------------------------
# Every command line of the recipe's block runs as written, with the cluster's paths moved under tmp_path,
# the expert's API replaced by a loopback stand-in, the 3B instruct model by a tiny random Qwen2 and the
# settings below appended for a toy size on CPU. The SLURM lines queue the CPU stages (other tests run
# them) except the SFT job, which runs here as the script runs it on a node: torchrun pretrain_arabic.py.

TOY_STEPS = 2
# script (and subcommand) -> what a toy run on CPU adds to the documented line: sizes only. `build_sft_data.py
# check` runs as documented (it picks the hf backend where vLLM is not installed); the SFT config trains in
# bf16, which the CPU toy run replaces with fp32.
TOY = {
    "make_seed_pairs.py generate": ["--rewrite.batch_size=4"],
    "build_sft_data.py check": ["--rewrite.sampling.max_new_tokens=8"],
    "pretrain_arabic.py": ["--data.seq_length=2048", "--data.num_workers=0", "--precision=fp32",
                           "--schedule.global_batch_size=2", f"--schedule.train_steps={TOY_STEPS}",
                           "--schedule.warmup_steps=1", f"--schedule.eval_interval={TOY_STEPS}",
                           "--schedule.eval_steps=1", "--logging.log_interval=1", "--logging.tensorboard=false"],
}


def recipe_lines() -> list[list[str]]:
    text = (ROOT / "docs" / "alignment.md").read_text(encoding="utf-8")
    section = text.split("## The paper's loop as one recipe", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [words for line in block.replace("\\\n", " ").splitlines()
            if (words := shlex.split(line, comments=True))]


def moved(words: list[str], paths: dict[str, str]) -> list[str]:
    out = []
    for w in words:
        for doc_path, toy_path in paths.items():
            w = w.replace(doc_path, toy_path)
        out.append(w)
    return out


def seed_corpus(path: Path) -> None:
    """A prepared shard where the recipe's glob finds it: short sample documents, each with an insult to edit."""
    rows = [json.loads(line) for line in (ROOT / "examples" / "data" / "sample_ar.jsonl").read_text().splitlines()]
    texts = [r["text"] for r in rows if 200 < len(r["text"]) < 450][:8]
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": f"{t}\nيا غبي!!! (رقم {i})"}, ensure_ascii=False)
                            + "\n" for i, t in enumerate(texts)), encoding="utf-8")


@pytest.mark.slow
def test_the_alignment_recipe_runs_at_toy_size(tmp_path):
    from tests.helpers.servers import ExpertServer
    from tests.helpers.tiny_qwen2 import make_tiny_qwen2

    qwen2 = make_tiny_qwen2(tmp_path / "models")
    seed_corpus(tmp_path / "aligned_work" / "prepare" / "task-0" / "shard-0.jsonl")
    (tmp_path / "examples").symlink_to(ROOT / "examples")      # the recipe runs from the repository's root
    bindir = os.path.dirname(sys.executable)                   # `tools/plan.py ...` finds this python3
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PATH=os.pathsep.join([bindir, os.environ.get("PATH", "")]), HF_HUB_OFFLINE="1")
    ran, outputs = [], {}
    with ExpertServer(model="gpt-4o") as expert:
        paths = {"/data/arabic/aligned_work": str(tmp_path / "aligned_work"), "https://api.openai.com/v1": expert.url,
                 "/models/Qwen2.5-3B-Instruct": str(qwen2), "/models/rewriter": str(tmp_path / "rewriter"),
                 "/checkpoints/": f"{tmp_path}/checkpoints/", "iter_0001060": f"iter_{TOY_STEPS:07d}"}
        for words in recipe_lines():
            if words[0] == "sbatch" and "examples/slurm/pretrain.sbatch" in words:
                config = words[words.index("examples/slurm/pretrain.sbatch") + 1]
                if "rewriter_sft" not in config:
                    continue                                   # the 8B pre-training: planned below, not run
                argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=1", "--standalone",
                        str(ROOT / "pretrain_arabic.py"), "--config", config,
                        # The config describes the 3B model; the toy import is smaller: take its shape.
                        "--checkpoint.model_from_checkpoint=true",
                        *moved([f"--checkpoint.dir=/checkpoints/{Path(config).stem}",
                                "--checkpoint.init_from=/checkpoints/qwen2.5_3b_instruct"], paths),
                        *TOY["pretrain_arabic.py"]]
                name = "pretrain_arabic.py"
            elif words[0] == "sbatch" or "=" in words[0]:
                continue                                       # CPU arrays of the data pipeline (tests/examples)
            else:
                script = next(w for w in words if w.endswith(".py"))
                args = moved(words[words.index(script) + 1:], paths)
                name = f"{Path(script).name} {args[0]}" if not args[0].startswith("-") else Path(script).name
                launcher = [sys.executable] if words[0] == "python" else []     # `tools/plan.py ...` is exec'd
                argv = [*launcher, str(ROOT / script), *args, *TOY.get(name, [])]
            out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, f"{shlex.join(words)}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
            ran.append(name)
            outputs[name] = outputs.get(name, "") + out.stdout + out.stderr
    assert ran == ["make_seed_pairs.py generate", "make_seed_pairs.py export", "convert_checkpoint.py hf-to-megatron",
                   "build_sft_data.py build", "plan.py", "pretrain_arabic.py", "convert_checkpoint.py megatron-to-hf",
                   "build_sft_data.py check", "plan.py rewrite", "plan.py"], ran
    pairs = [json.loads(line) for line in (tmp_path / "seed" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 8 and all(p["rewritten"] for p in pairs)       # the stand-in expert's edits pass
    assert len(expert.requests) == 8 and expert.requests[0]["model"] == "gpt-4o"
    assert len((tmp_path / "seed" / "sft.jsonl").read_text().splitlines()) == 8
    assert "fits," in outputs["plan.py"] and "GPU-hours" in outputs["plan.py rewrite"]
    assert (tmp_path / "rewriter" / "config.json").exists()
    assert "held-out pass rate 0/1" in outputs["build_sft_data.py check"]   # a random model's noise fails
