"""The docs as a user reads them: the paper cited by its authors, and docs/alignment.md's recipe run at toy size."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

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
