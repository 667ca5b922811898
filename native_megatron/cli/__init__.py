"""The command lines (``nm-*`` and ``tools/*.py``): parse, call the package, exit.

Each module here holds one tool's ``main(argv) -> exit code``. They import only
the config schema at the top, so ``--help`` answers in well under a second;
torch, megatron-core and transformers are imported once there is work to do.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from native_megatron.utils.config import config_to_dict, format_config_help

SETTINGS_HEADER = ("settings{note}: --section.key=VALUE or --section.key VALUE, a list as a,b or '[a, b]';\n"
                   "--print-config shows the values a run would use")


def add_config_help(parser: argparse.ArgumentParser, sections: list[tuple[type, str]], note: str = "") -> None:
    """List every setting of ``sections`` ((dataclass, key prefix) pairs) in ``parser``'s help; add --print-config."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (YAML) and exit")
    listing = "\n".join(format_config_help(cls, prefix) for cls, prefix in sections)
    parts = [parser.epilog or "", SETTINGS_HEADER.format(note=f" ({note})" if note else "") + "\n" + listing]
    parser.epilog = "\n\n".join(p for p in parts if p)


def print_config(cfg: Any) -> int:
    """Print a config dataclass (or a mapping of them) as YAML; the exit code of --print-config."""
    import yaml

    data = {k: config_to_dict(v) for k, v in cfg.items()} if isinstance(cfg, dict) else \
        config_to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), end="")
    return 0
