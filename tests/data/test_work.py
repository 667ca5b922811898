"""Units of work: a lease held by a real second process makes the first wait, a dead holder's lease is taken
over, and a done-marker vouches for the size and checksum of each file it lists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from native_megatron.data.work import HOST, Lease, Marker, WorkError, run_unit
from tests.helpers.paths import ROOT

HOLD = """
import sys, time
from native_megatron.data.work import Lease
with Lease(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def holder(path, seconds) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_lease_of_another_process_makes_us_wait_and_a_dead_ones_is_taken_over(tmp_path):
    path = tmp_path / "unit.lease"
    proc = holder(path, 1.5)
    held = json.loads(path.read_text())
    assert (held["host"], held["pid"]) == (HOST, proc.pid) and held["heartbeat"] >= held["started"]
    start = time.monotonic()
    with Lease(path):
        waited = time.monotonic() - start      # we got it only once the holder had let go (it holds 1.5 s)
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert proc.wait(timeout=60) == 0
    assert waited > 0.5 and not path.exists()

    # kill -9: the lease file stays, naming a pid that is gone; the next process takes it over.
    proc = holder(path, 60)
    proc.kill()
    proc.wait()
    assert json.loads(path.read_text())["pid"] == proc.pid
    start = time.monotonic()
    with Lease(path):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert time.monotonic() - start < 5


def test_another_hosts_lease_is_taken_over_only_when_its_heartbeat_is_old(tmp_path, monkeypatch):
    path = tmp_path / "unit.lease"
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": 0, "heartbeat": time.time() - 3600}))
    with Lease(path, stale_s=600):
        assert json.loads(path.read_text())["host"] == HOST
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": 0, "heartbeat": time.time()}))
    monkeypatch.setenv("NM_LEASE_STALE_S", "1")
    lease = Lease(path, heartbeat_s=0.5)
    start = time.monotonic()
    lease.acquire()      # waits for the heartbeat to grow old
    lease.release()
    assert time.monotonic() - start >= 0.9


def test_a_lease_taken_over_meanwhile_is_a_lost_race_in_one_line(tmp_path):
    path = tmp_path / "unit.lease"
    lease = Lease(path).acquire()
    path.write_text(json.dumps({"host": "elsewhere", "pid": 7, "started": 0, "heartbeat": time.time(),
                                "token": "theirs"}))
    with pytest.raises(WorkError, match=r"lost its lease \(now held by elsewhere pid 7\)"):
        lease.release()


def test_a_marker_vouches_for_its_files_and_a_damaged_one_means_redo(tmp_path):
    out = tmp_path / "part.bin"
    calls = []

    def work():
        calls.append(1)
        out.write_bytes(b"x" * 1000)
        return {"documents": 3}, [out]

    marker = Marker(tmp_path / "unit.json", {"identity": "abc"})
    assert run_unit(marker, work)["reused"] is False
    assert run_unit(marker, work)["reused"] is True and len(calls) == 1
    with open(out, "r+b") as f:
        f.truncate(10)
    assert marker.load() is None and marker.problem == f"{out} is 10 bytes, its step wrote 1,000"
    out.write_bytes(b"y" * 1000)    # same size, other bytes
    assert marker.load() is None and "checksum" in marker.problem
    assert run_unit(marker, work)["reused"] is False and len(calls) == 2
    assert Marker(marker.path, {"identity": "other"}).load() is None
    marker.path.write_bytes(b'{"identity": "ab')
    assert marker.load() is None and marker.problem is None
    assert run_unit(marker, work)["reused"] is False and len(calls) == 3
