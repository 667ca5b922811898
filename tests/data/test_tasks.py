import json
import os
import subprocess
import sys

from native_megatron.data.tasks import ShardTask, remove_stale_temp_files, temp_prefix


def test_a_task_is_done_only_with_its_signature_and_the_marker_keeps_the_signature_first(tmp_path):
    task = ShardTask(tmp_path / "part.done.json", {"signature": {"shard": "a", "bytes": 3}})
    assert not task.done() and task.load_done() is None and task.read() is None
    task.mark_done({"documents": 2})
    assert list(json.loads(task.done_path.read_text())) == ["signature", "documents"]
    assert task.load_done() == {"signature": {"shard": "a", "bytes": 3}, "documents": 2}
    other = ShardTask(task.done_path, {"signature": {"shard": "a", "bytes": 4}})
    assert not other.done() and other.read() is not None


def test_stale_temp_files_of_dead_writers_go_and_live_ones_stay(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"part-00000.tmp{dead.pid}.bin"
    live = tmp_path / (os.path.basename(temp_prefix("part-00001")) + ".idx")
    stale.write_bytes(b"x")
    live.write_bytes(b"x")
    assert remove_stale_temp_files(tmp_path, "part-*") == [str(stale)]
    assert live.exists()
