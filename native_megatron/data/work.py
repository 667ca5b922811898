"""Units of resumable work: one identity, a done-marker that vouches for its files, and a lease.

Every step of the data path (clean, merge, clusters, filter, tokenize, publish) is made of
units. A unit is finished when its done-marker exists, carries the unit's identity (a digest
of everything that changes its output) and every file it lists still has the size and
checksum it had when the unit wrote it. A unit is worked on only under its lease, a lock
file naming the holder (host, pid, start time, heartbeat): a second process meeting a live
lease waits for it and then finds the unit done; a dead holder's lease (same host: its pid
is gone; another host: no heartbeat for ``stale_s``) is taken over. Only the holder removes
the unit's temporary files, so a resubmitted job never deletes a live run's work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import xxhash

from native_megatron.utils.config import ConfigError
from native_megatron.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

_CHUNK = 1 << 22


class WorkError(ConfigError):
    """Work on disk cannot be trusted or used (a damaged file, a lost lease): one line, what to do."""


def identity(obj: Any) -> str:
    """The digest of a unit's inputs and settings (JSON-able; key order does not matter)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_record(path: str | Path) -> dict:
    """A file's size and a fast checksum (xxh3-128), as a done-marker records it."""
    h = xxhash.xxh3_128()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
            size += len(block)
    return {"bytes": size, "xxh3_128": h.hexdigest()}


def file_problem(path: str | Path, recorded: dict) -> str | None:
    """Why ``path`` is not the file a marker recorded (None when it is)."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return f"{path} is missing"
    if size != recorded["bytes"]:
        return f"{path} is {size:,} bytes, its step wrote {recorded['bytes']:,}"
    if file_record(path) != recorded:
        return f"{path} does not have the checksum its step recorded (damaged in place)"
    return None


def read_marker(path: Path) -> dict | None:
    """A marker's content; None when there is none or it is damaged (then its unit is redone)."""
    try:
        with open(path, encoding="utf-8") as f:
            marker = json.load(f)
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        logger.warning("%s is damaged; its unit is redone", path)
        return None
    return marker if isinstance(marker, dict) else None


@dataclass
class Marker:
    """The done-marker of one unit: ``fields`` (its identity) must match, and its files must check."""

    path: Path
    fields: dict[str, Any]
    # Set by :meth:`load` when the marker exists but cannot stand: why.
    problem: str | None = field(default=None, repr=False)

    def load(self, verify: bool = True, quiet: bool = False) -> dict | None:
        """The marker when the unit is finished as these fields say, and its files are as written
        (a file that is not is logged, unless ``quiet``, and named in :attr:`problem`)."""
        self.problem = None
        marker = read_marker(self.path)
        if marker is None:
            return None
        if any(marker.get(k) != v for k, v in self.fields.items()):
            return None
        if verify:
            for name, recorded in marker.get("files", {}).items():
                problem = file_problem(self.path.parent / name, recorded)
                if problem is not None:
                    self.problem = problem
                    if not quiet:
                        logger.warning("%s; redoing the unit that wrote it", problem)
                    return None
        return marker

    def write(self, result: dict[str, Any], files: Iterable[str | Path] = ()) -> dict[str, Any]:
        """Write the marker last, atomically, recording each of ``files`` (size and checksum)."""
        records = {os.path.relpath(f, self.path.parent): file_record(f) for f in files}
        marker = {**self.fields, **result, "files": records}
        atomic_write_json(self.path, marker)
        return marker


# ---- leases ------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True     # someone else's live process
    return True


HOST = socket.gethostname()


class Lease:
    """A lock file held while a unit is worked on; see the module docstring.

    ``stale_s``: a holder on another host that has not renewed its heartbeat for this long is
    taken for dead (its lease is renewed every ``heartbeat_s``); by default ``NM_LEASE_STALE_S``
    or 600. A cluster whose requeued jobs land on other nodes may want it shorter; it must stay
    well above ``heartbeat_s`` plus the file system's delay in showing a write to other hosts.
    """

    def __init__(self, path: str | Path, heartbeat_s: float = 30.0, stale_s: float | None = None) -> None:
        self.path = Path(path)
        if stale_s is None:
            stale_s = float(os.environ.get("NM_LEASE_STALE_S", 600))
        if stale_s <= heartbeat_s:
            raise ConfigError(f"a lease's stale time ({stale_s:g} s, NM_LEASE_STALE_S) must exceed its heartbeat "
                              f"({heartbeat_s:g} s)")
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.token = uuid.uuid4().hex
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None

    def _content(self) -> dict:
        return {"host": HOST, "pid": os.getpid(), "started": self.started, "heartbeat": time.time(),
                "token": self.token}

    def _write_temp(self) -> str:
        tmp = f"{self.path}.{HOST}.{os.getpid()}.{self.token[:8]}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self._content(), f)
        return tmp

    def _try_create(self) -> bool:
        """Create the lease with its whole content at once (a hard link fails if it exists); on a file
        system without hard links, create it exclusively and then write it."""
        tmp = self._write_temp()
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._content(), f)
            return True
        finally:
            os.unlink(tmp)

    def _holder(self) -> dict | None:
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            return {}

    def _dead(self, holder: dict) -> bool:
        if holder.get("host") == HOST and isinstance(holder.get("pid"), int):
            return not pid_alive(holder["pid"])
        beat = holder.get("heartbeat")
        if not isinstance(beat, (int, float)):
            try:
                beat = self.path.stat().st_mtime
            except FileNotFoundError:
                return False
        return time.time() - beat > self.stale_s

    def _take_over(self, holder: dict) -> None:
        """Move a dead holder's lease aside; put it back if a live one was moved by a lost race."""
        aside = f"{self.path}.takeover.{HOST}.{os.getpid()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            with open(aside, encoding="utf-8") as f:
                moved = json.load(f)
        except (ValueError, UnicodeDecodeError):
            moved = {}
        if moved.get("token") != holder.get("token"):
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        else:
            logger.warning("%s: taking over the lease of %s pid %s (no longer running)", self.path,
                           holder.get("host", "?"), holder.get("pid", "?"))
        os.unlink(aside)

    def acquire(self) -> "Lease":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        waited_since = None
        while not self._try_create():
            holder = self._holder()
            if holder is None:
                continue
            if self._dead(holder):
                self._take_over(holder)
                continue
            if waited_since is None or time.monotonic() - waited_since > 60:
                logger.info("%s is being worked on by %s pid %s; waiting for it", self.path.parent,
                            holder.get("host", "?"), holder.get("pid", "?"))
                waited_since = time.monotonic()
            time.sleep(0.2)
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"lease {self.path.name}")
        self._thread.start()
        return self

    def _still_mine(self) -> bool:
        holder = self._holder()
        if holder is not None and holder.get("token") == self.token:
            return True
        who = f"{holder.get('host', '?')} pid {holder.get('pid', '?')}" if holder else "nobody"
        self.lost = f"{self.path}: this process lost its lease (now held by {who}); the holder's work stands"
        return False

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self._still_mine():
                    return
                os.replace(self._write_temp(), self.path)
            except OSError as exc:   # the directory removed under us (another run's --overwrite), a full disk
                self.lost = f"{self.path}: this process could not renew its lease ({exc.strerror or exc})"
                return

    def release(self) -> None:
        """Give the lease up; a lease taken over meanwhile is a lost race (:class:`WorkError`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost is None and self._still_mine():
            self.path.unlink(missing_ok=True)
        if self.lost is not None:
            raise WorkError(self.lost)

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, exc_type, *_: Any) -> None:
        if exc_type is None:
            self.release()
        else:   # the error in flight says more than a lost lease would
            self._stop.set()
            if self._still_mine():
                self.path.unlink(missing_ok=True)


def run_unit(marker: Marker, work: Callable[[], tuple[dict, list]], cleanup: Callable[[], None] | None = None,
             lease_path: Path | None = None) -> dict:
    """One unit of work, once: the finished marker (``reused``), or, under the unit's lease, the
    holder's cleanup, ``work()`` -> (result, files written) and the marker written last."""
    done = marker.load()
    if done is not None:
        return {**done, "reused": True}
    with Lease(lease_path or marker.path.with_name(marker.path.name + ".lease")):
        done = marker.load(quiet=True)   # finished by the holder we waited for
        if done is not None:
            return {**done, "reused": True}
        if cleanup is not None:
            cleanup()
        result, files = work()
        return {**marker.write(result, files), "reused": False}
