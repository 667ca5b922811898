"""The command lines: every setting in --help, fast; --print-config; documented flags accepted; nm-* commands."""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from native_megatron.utils.config import describe_config, split_overrides, top_level_keys

ROOT = Path(__file__).resolve().parents[2]
# script -> (module in native_megatron/cli, arguments that show the settings' help, a key its help lists)
TOOLS = {
    "pretrain_arabic.py": ("pretrain", ["--help"], "--optim.lr float"),
    "tools/preprocess_aligned.py": ("preprocess", ["--help"], "--clean.min_chars int"),
    "tools/plan.py": ("plan", ["--help"], "--parallel.tensor int"),
    "tools/evaluate.py": ("evaluate", ["--help"], "--shots"),
    "tools/make_seed_pairs.py": ("seed_pairs", ["generate", "--help"], "--rewrite.openai.base_urls list[str]"),
    "tools/convert_checkpoint.py": ("convert", ["hf-to-megatron", "--help"], "--tp"),
    "tools/train_tokenizer.py": ("train_tokenizer", ["--help"], "--vocab-size"),
    "tools/make_tiny_model.py": ("tiny_model", ["--help"], "--vocab-size"),
    "tools/build_sft_data.py": ("sft_data", ["build", "--help"], "--tokenizer"),
    "tools/review_rewrites.py": ("review", ["--help"], "--sample"),
}

# nm-* command -> the script it stands for
COMMANDS = {"nm-pretrain": "pretrain_arabic.py", "nm-preprocess": "tools/preprocess_aligned.py",
            "nm-plan": "tools/plan.py", "nm-evaluate": "tools/evaluate.py", "nm-seed-pairs": "tools/make_seed_pairs.py",
            "nm-convert": "tools/convert_checkpoint.py", "nm-train-tokenizer": "tools/train_tokenizer.py",
            "nm-tiny-model": "tools/make_tiny_model.py", "nm-sft-data": "tools/build_sft_data.py",
            "nm-review": "tools/review_rewrites.py"}


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    # Run as the docs write it (`tools/plan.py ...`): the file's mode and shebang are part of what is tested,
    # with this interpreter's directory first on PATH so that the shebang's python3 is this one.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = dict(os.environ, PYTHONPATH=str(ROOT), PATH=path)
    return subprocess.run([str(ROOT / script), *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_every_script_is_executable_with_a_shebang():
    scripts = [ROOT / "pretrain_arabic.py", *sorted((ROOT / "tools").glob("*.py"))]
    assert {str(s.relative_to(ROOT)) for s in scripts} == set(TOOLS)   # a new tool gets its --help test too
    for script in scripts:
        assert os.stat(script).st_mode & 0o111 == 0o111, f"{script.relative_to(ROOT)}: chmod +x (git add records it)"
        assert script.read_text().startswith("#!/usr/bin/env python3\n"), script


@pytest.mark.parametrize("script", TOOLS)
def test_help_lists_the_settings_and_answers_fast(script):
    _, args, key = TOOLS[script]
    start = time.monotonic()
    out = run(script, *args)
    seconds = time.monotonic() - start
    assert out.returncode == 0, out.stderr
    assert key in out.stdout
    # Generous for a loaded CI machine; about 0.1-0.4 s when torch is not imported for --help.
    assert seconds < 5, f"{script} --help took {seconds:.1f} s: keep heavy imports out of the parser's path"


@pytest.mark.parametrize("module", ["pretrain", "preprocess", "plan", "seed_pairs"])
def test_help_names_every_setting_with_its_meaning(module):
    cli = importlib.import_module(f"native_megatron.cli.{module}")
    parser = cli.build_parser()
    if module == "seed_pairs":  # the settings belong to the generate subcommand
        parser = parser._subparsers._group_actions[0].choices["generate"]
    text = parser.format_help()
    for cls, prefix in cli.SETTINGS:
        for key, tp, default, doc in describe_config(cls, prefix):
            assert f"--{key} {tp}  (default: {default})" in text
            if doc:
                assert doc.split()[0] in text


def test_preprocess_help_points_to_the_alignment_docs():
    out = run("tools/preprocess_aligned.py", "--help")
    assert "rewrite and validate in docs/alignment.md" in out.stdout


def test_print_config_prints_the_resolved_yaml_and_exits_0(tmp_path):
    import yaml

    out = run("tools/plan.py", "--config", "examples/configs/llama3_8b.yaml", "--optim.lr", "1e-4", "--print-config")
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["optim"]["lr"] == 1e-4 and cfg["model"]["num_layers"] == 32
    out = run("tools/preprocess_aligned.py", "--input", "x.jsonl", "--output-prefix", str(tmp_path / "o"),
              "--tokenizer", "t", "--clean.min_chars", "7", "--print-config")
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["clean"]["min_chars"] == 7
    assert not list(tmp_path.iterdir()), "--print-config must not start any work"


def test_an_unknown_key_lists_its_sections_keys():
    out = run("tools/plan.py", "--config", "examples/configs/llama3_8b.yaml", "--optim.lrr=1")
    assert out.returncode == 2
    assert "did you mean 'lr'?" in out.stderr and "valid keys of optim: lr, min_lr" in out.stderr


# ---- every command line shown in the README and docs is accepted -----------------------------------------

def documented_commands() -> list[tuple[str, str, list[str]]]:
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", doc.read_text(encoding="utf-8"), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                for i, word in enumerate(words):
                    script = next((s for s in TOOLS if word.endswith(s)), None)
                    script = script or COMMANDS.get(word)
                    if script:
                        argv = []
                        for w in words[i + 1:]:
                            if w in ("|", "&&", ";", "||"):
                                break
                            if w != "...":  # elided arguments
                                argv.append(w)
                        found.append((doc.name, script, argv))
                        break
    return found


def test_the_docs_show_command_lines():
    assert len(documented_commands()) >= 15


@pytest.mark.parametrize("doc, script, argv", documented_commands(),
                         ids=lambda x: x if isinstance(x, str) else None)
def test_documented_flags_are_accepted(doc, script, argv):
    cli = importlib.import_module(f"native_megatron.cli.{TOOLS[script][0]}")
    sections = getattr(cli, "SETTINGS", [])
    top = [k for cls, prefix in sections if not prefix for k in top_level_keys(cls)]
    rest, overrides = split_overrides(argv, top)
    try:
        cli.build_parser().parse_args(rest)
    except SystemExit as exc:
        assert exc.code == 0, f"{doc}: {script} rejects {shlex.join(argv)}"
    keys = {key for cls, prefix in sections for key, *_ in describe_config(cls, prefix)}
    for text in overrides:
        key = text[2:].split("=", 1)[0].replace("-", "_")
        assert key in keys, f"{doc}: {script} has no setting {key}"


# ---- nm-* commands --------------------------------------------------------------------------------------

def test_every_console_script_names_a_main_in_the_package():
    text = (ROOT / "setup.py").read_text()
    scripts = dict(re.findall(r'"(nm-[\w-]+)=([\w.:]+)"', text))
    assert set(scripts) == set(COMMANDS)
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func))


def test_tools_are_thin_wrappers_without_sys_path_hacks():
    for script, (module, _, _) in TOOLS.items():
        text = (ROOT / script).read_text()
        assert "sys.path.insert" not in text
        assert f"from native_megatron.cli.{module} import main" in text
