"""The older resume scheme, kept for the rewrite stage and the dedup units: shard tasks with a signature and
a done marker written last. New units use :mod:`native_megatron.data.work` (identity, verified files, leases).

A task's outputs are written atomically (``utils.io.atomic_open``, or a
``{prefix}.tmp{PID}`` file renamed into place, see :func:`temp_prefix`), and its
done marker last, so a killed run leaves either a finished task or one that
is redone; :func:`remove_stale_temp_files` clears what killed writers left.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from native_megatron.data.work import pid_alive, read_marker
from native_megatron.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

_TEMP_NAME = re.compile(r".+\.tmp(?P<pid>\d+)\.(bin|idx)")


@dataclass
class ShardTask:
    """One unit of resumable work, finished when ``done_path`` exists and carries ``signature``.

    ``signature`` holds the marker fields that must match for the work to be reused
    (what the inputs and settings were); the result is written beside them.
    """

    done_path: Path
    signature: dict[str, Any]

    def read(self) -> dict | None:
        """The done marker as written, whatever its signature; None when there is none or it is damaged
        (then the work is redone)."""
        return read_marker(self.done_path)

    def load_done(self) -> dict | None:
        """The done marker, when it exists and was written with this signature."""
        marker = self.read()
        if marker is not None and all(marker.get(k) == v for k, v in self.signature.items()):
            return marker
        return None

    def done(self) -> bool:
        return self.load_done() is not None

    def mark_done(self, result: dict[str, Any]) -> dict[str, Any]:
        """Write the marker (signature, then ``result``) atomically; call it after every output is in place."""
        marker = {**self.signature, **result}
        atomic_write_json(self.done_path, marker)
        return marker


@dataclass
class StageResult:
    """What a stage between prepare and tokenize hands on (with several ranks, each does only its share)."""

    shards: list[str]          # the stage's shards, in order (all of them, when complete)
    manifests: list[str]       # one manifest per shard
    stats: dict
    complete: bool


def temp_prefix(prefix: str) -> str:
    """Where this process writes ``prefix``'s files before :func:`publish` renames them into place."""
    return f"{prefix}.tmp{os.getpid()}"


def publish(tmp: str, prefix: str, suffixes: tuple[str, ...]) -> None:
    """Rename ``tmp + suffix`` to ``prefix + suffix``, in the order given."""
    for suffix in suffixes:
        os.replace(tmp + suffix, prefix + suffix)


def remove_stale_temp_files(directory: Path, stem_glob: str) -> list[str]:
    """Remove ``{stem}.tmp{PID}.bin/.idx`` files (see :func:`temp_prefix`) left by writers that were killed.

    The PID in the name says whose file it is; a file whose writer still runs on this
    machine is left alone.
    """
    removed = []
    for path in sorted(directory.glob(f"{stem_glob}.tmp*")):
        match = _TEMP_NAME.fullmatch(path.name)
        if match and not pid_alive(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(str(path))
    if removed:
        logger.info("removed %d temp file(s) of killed writers in %s", len(removed), directory)
    return removed
