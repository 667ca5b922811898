"""Alignment guidelines as data: principles and the prompt that presents them with a document.

A guidelines file (YAML; ``examples/guidelines/native_alignment_{en,ar}.yaml``)
has ``name``, ``version``, ``language``, a list of ``principles`` (``id``,
``rule``, ``why``), a ``system_prompt`` with a ``{principles}`` slot and a
``user_template`` with a ``{document}`` slot. The manifest records the name,
version and a content hash of the file used for every rewrite.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from native_megatron.utils.config import ConfigError


@dataclass(frozen=True)
class Principle:
    id: str
    rule: str
    why: str = ""


@dataclass(frozen=True)
class Guidelines:
    name: str
    version: str
    language: str
    principles: tuple[Principle, ...]
    system_prompt: str
    user_template: str
    sha256: str

    @property
    def tag(self) -> str:
        """``name@version#hash``: what the manifest records."""
        return f"{self.name}@{self.version}#{self.sha256[:12]}"

    def system_message(self) -> str:
        listed = "\n".join(f"{i}. {p.rule}" for i, p in enumerate(self.principles, start=1))
        return self.system_prompt.replace("{principles}", listed).strip()

    def messages(self, document: str) -> list[dict[str, str]]:
        """Chat messages asking for the rewrite of ``document``."""
        return [{"role": "system", "content": self.system_message()},
                {"role": "user", "content": self.user_template.replace("{document}", document).strip()}]

    def prompt_fragments(self) -> list[str]:
        """Fixed lines of the prompt; finding one in an output means the prompt leaked into it."""
        fragments = [p.rule for p in self.principles]
        for text in (self.system_prompt, self.user_template):
            for line in text.splitlines():
                line = line.strip()
                if line and "{" not in line:
                    fragments.append(line)
        return fragments


def load_guidelines(path: str | Path) -> Guidelines:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"guidelines file not found: {p}")
    raw = p.read_bytes()
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"guidelines {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"guidelines {p} must be a mapping")
    for key in ("name", "version", "principles", "system_prompt", "user_template"):
        if key not in data:
            raise ConfigError(f"guidelines {p}: missing '{key}'")
    if "{document}" not in data["user_template"]:
        raise ConfigError(f"guidelines {p}: user_template has no {{document}} slot")
    if "{principles}" not in data["system_prompt"]:
        raise ConfigError(f"guidelines {p}: system_prompt has no {{principles}} slot")
    principles = []
    for i, item in enumerate(data["principles"]):
        if not isinstance(item, dict) or not item.get("rule"):
            raise ConfigError(f"guidelines {p}: principle {i} needs a 'rule'")
        principles.append(Principle(str(item.get("id", f"p{i}")), str(item["rule"]).strip(),
                                    str(item.get("why", "")).strip()))
    if not principles:
        raise ConfigError(f"guidelines {p}: no principles")
    return Guidelines(str(data["name"]), str(data["version"]), str(data.get("language", "")),
                      tuple(principles), str(data["system_prompt"]), str(data["user_template"]),
                      hashlib.sha256(raw).hexdigest())


_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _SPACE.sub(" ", text).strip()
