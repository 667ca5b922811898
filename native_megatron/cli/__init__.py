"""The command lines (``nm-*`` and ``tools/*.py``): parse, call the package, exit.

Each module here holds one tool's ``main(argv) -> exit code``, wrapped in
:func:`cli_main`, which turns a user's mistake into one line and an exit code.
They import only the config schema at the top, so ``--help`` answers in well
under a second; torch, megatron-core and transformers are imported once there
is work to do.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from collections.abc import Callable, Mapping
from typing import Any

from native_megatron.utils.config import ConfigError, config_to_dict, format_config_help

Main = Callable[[list[str] | None], int]


def cli_main(main: Main | None = None, /, *, exit_codes: Mapping[type[BaseException] | tuple, int] | None = None):
    """Wrap a tool's ``main(argv) -> int``: a ConfigError (exit 2), or an exception named in ``exit_codes``
    (types -> exit code, first match wins), prints ``error: MESSAGE`` on stderr and returns the code.
    Anything else is a bug and keeps its traceback. ``@cli_main`` or ``@cli_main(exit_codes={...})``."""
    if main is None:
        return functools.partial(cli_main, exit_codes=exit_codes)
    codes = [*(exit_codes or {}).items(), (ConfigError, 2)]

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except Exception as exc:
            code = next((c for types, c in codes if isinstance(exc, types)), None)
            if code is None:
                raise
            print(f"error: {exc}", file=sys.stderr)
            return code

    return wrapper

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
