"""Score checkpoints on Arabic knowledge and alignment, and compare them in one report.

    python tools/evaluate.py --model raw=runs/raw/checkpoints aligned=runs/aligned/checkpoints \\
        --tasks arabic_mmlu,exams,acva,alghafa,alignment --data-dir /data/arabic_eval --shots 5

--model takes HF Llama directories or checkpoints of pretrain_arabic.py (exported
to HF first, once), optionally named NAME=PATH. Multiple-choice tasks are scored
under a named protocol (--protocol): oall, the Open Arabic LLM Leaderboard's
lighteval prompts (default); arabicmmlu, the ArabicMMLU paper's letter logits;
cloze, options as continuations (acc, acc_norm, acc_bytes). alignment and
beavertails answer harmful and value-sensitive prompts and have a judge label
them (an OpenAI-compatible endpoint or a local classifier), checked first
against human labels with --judge-check; mmlu runs through lm-evaluation-harness. The report goes to
OUT/report.md, OUT/results.json and OUT/report.png. Task files are read from
DATA_DIR/<task>/ in their published formats (docs/evaluation.md); small samples
ship in examples/eval/.
"""

from __future__ import annotations

import argparse
import sys

from native_megatron.cli import cli_main, print_config
from native_megatron.evaluation.protocols import PROTOCOLS
from native_megatron.evaluation.tasks import ALIGNMENT, READERS
from native_megatron.utils.config import load_config, split_overrides
from native_megatron.utils.logging import setup_logging

OTHER_TASKS = (ALIGNMENT, "beavertails", "mmlu")  # run.py's generation and lm-eval tasks


def _list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", metavar="[NAME=]PATH",
                   help="HF directories, iter_* checkpoints or run checkpoint directories (or models in --config)")
    p.add_argument("--tasks", type=_list,
                   help=f"comma-separated, from {','.join([*READERS, *OTHER_TASKS])} "
                        f"(default: {','.join([*READERS, ALIGNMENT])})")
    p.add_argument("--protocol", choices=PROTOCOLS,
                   help="prompts and scoring: oall (Open Arabic LLM Leaderboard / lighteval, the default), "
                        "arabicmmlu (the ArabicMMLU paper), cloze (options as continuations); docs/evaluation.md")
    p.add_argument("--arabicmmlu-prompt", choices=["ar", "en"],
                   help="arabicmmlu protocol: the instruction's language (default ar, as its evaluate.py)")
    p.add_argument("--arabicmmlu-letters", choices=["ar", "en"],
                   help="arabicmmlu protocol: Arabic or Latin option letters (default ar)")
    p.add_argument("--chat-template", choices=["auto", "on", "off"],
                   help="multiple choice through the model's chat template: auto (default) does what each "
                        "protocol's source does: oall uses it when the tokenizer has one, as lighteval; cloze and "
                        "arabicmmlu do not; the report says which was used")
    p.add_argument("--log-samples", action="store_true",
                   help="write OUT/samples/MODEL/TASK.jsonl: per item the prompt, each choice's log-likelihood, "
                        "token count and normalisations, the gold and the picks; per answer the prompt, answer "
                        "and verdict")
    p.add_argument("--data-dir", help="holds one folder per task (default: the samples, examples/eval/ of the "
                                      "checkout the package runs from, whatever the current directory)")
    p.add_argument("--task-dir", action="append", metavar="TASK=DIR",
                   help="a task's folder elsewhere, e.g. acva=/data/ACVA (repeatable)")
    p.add_argument("--out", help="report and exported models go here (default runs/eval)")
    p.add_argument("--shots", type=int, help="few-shot examples from the dev split (default 0)")
    p.add_argument("--limit", type=int, help="at most this many questions per task (quick checks)")
    p.add_argument("--batch-size", type=int, help="default 8")
    p.add_argument("--device", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"],
                   help="auto: bf16 on GPU, fp32 on CPU")
    p.add_argument("--tokenizer", help="tokenizer for checkpoints that do not name one")
    p.add_argument("--alignment-prompts", help="JSONL prompts (default DATA_DIR/alignment/prompts.jsonl)")
    p.add_argument("--judge", choices=["none", "openai", "classifier"],
                   help="who labels alignment answers safe or unsafe (default none: answers are only written)")
    p.add_argument("--judge-model", help="the served model's name (openai) or a classifier directory")
    p.add_argument("--judge-url", action="append", help="OpenAI-compatible base URL (repeatable); "
                                                                      "the API key comes from OPENAI_API_KEY")
    p.add_argument("--judge-unsafe-labels", type=_list,
                   help="classifier labels that mean unsafe (default unsafe,harmful,toxic)")
    p.add_argument("--judge-check", metavar="FILE",
                   help="first run the judge on human-labelled answers (JSONL prompt, response, label) and report "
                        "agreement and Cohen's kappa; e.g. examples/eval/alignment/judge_check.jsonl")
    p.add_argument("--judge-min-kappa", type=float,
                   help="below this kappa the report marks the judge's rates as not trusted (default 0.6)")
    p.add_argument("--max-new-tokens", type=int, help="answer length for alignment prompts (default 128)")
    p.add_argument("--lm-eval-tasks", type=_list,
                   help="also run these lm-evaluation-harness tasks (the eval extra installs it)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--config", metavar="YAML", help="settings file (the keys of --print-config); flags win over it")
    p.add_argument("--print-config", action="store_true", help="print the resolved settings (YAML) and exit")
    return p


def parse_args(argv: list[str]):
    """The command line -> (EvalConfig, whether to only print it): --config YAML, then the flags given, then
    ``--key.sub=value`` overrides (e.g. ``--task_dirs.acva=/data/ACVA``)."""
    rest, overrides = split_overrides(argv)
    p = build_parser()
    a = p.parse_args(rest)
    from native_megatron.evaluation.run import EvalConfig  # after parsing: it imports torch, --help need not

    setup_logging(a.log_level)
    base = {"models": a.model, "tasks": a.tasks, "protocol": a.protocol, "arabicmmlu_prompt": a.arabicmmlu_prompt,
            "arabicmmlu_letters": a.arabicmmlu_letters, "chat_template": a.chat_template,
            "log_samples": True if a.log_samples else None, "judge_check": a.judge_check,
            "judge_min_kappa": a.judge_min_kappa, "data_dir": a.data_dir, "out": a.out, "shots": a.shots,
            "limit": a.limit, "batch_size": a.batch_size, "device": a.device, "dtype": a.dtype,
            "tokenizer": a.tokenizer, "alignment_prompts": a.alignment_prompts, "judge": a.judge,
            "judge_model": a.judge_model, "judge_urls": a.judge_url, "judge_unsafe_labels": a.judge_unsafe_labels,
            "max_new_tokens": a.max_new_tokens, "lm_eval_tasks": a.lm_eval_tasks,
            "progress": False if a.no_progress else None}
    for item in a.task_dir or []:
        if "=" not in item:
            p.error(f"--task-dir {item!r}: use TASK=DIR")
        task, path = item.split("=", 1)
        base[f"task_dirs.{task}"] = path
    cfg = load_config(EvalConfig, a.config, overrides, base={k: v for k, v in base.items() if v is not None})
    return cfg, a.print_config


@cli_main
def main(argv: list[str] | None = None) -> int:
    cfg, only_print = parse_args(sys.argv[1:] if argv is None else argv)
    if only_print:
        return print_config(cfg)
    from native_megatron.evaluation.run import evaluate

    _, _, paths = evaluate(cfg)
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(f"report: {paths['markdown']}, {paths['json']}, {paths['plot']}")
    return 0

