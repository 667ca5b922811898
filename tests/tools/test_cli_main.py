"""cli_main: one place that turns a user's mistake into one line and an exit code; configs from YAML."""

from __future__ import annotations

import pytest
import yaml

from native_megatron.cli import cli_main
from native_megatron.utils.config import ConfigError


class Gone(RuntimeError):
    pass


@cli_main(exit_codes={Gone: 3})
def tool(argv=None) -> int:
    if argv == ["bad"]:
        raise ConfigError("set --x")
    if argv == ["gone"]:
        raise Gone("the server went away")
    if argv == ["bug"]:
        raise KeyError("a bug")
    return 0


def test_mistakes_are_one_line_and_an_exit_code_and_bugs_keep_their_traceback(capsys):
    assert tool([]) == 0
    assert tool(["bad"]) == 2 and capsys.readouterr().err == "error: set --x\n"
    assert tool(["gone"]) == 3 and capsys.readouterr().err == "error: the server went away\n"
    with pytest.raises(KeyError):
        tool(["bug"])


def test_evaluate_reads_a_yaml_file_and_flags_and_overrides_win(tmp_path, capsys):
    from native_megatron.cli.evaluate import main

    path = tmp_path / "eval.yaml"
    path.write_text("models: [demo=runs/x]\nshots: 3\nbatch_size: 2\ntask_dirs: {acva: /data/ACVA}\n")
    assert main(["--config", str(path), "--shots", "5", "--task_dirs.exams=/data/EXAMS", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["models"] == ["demo=runs/x"] and cfg["shots"] == 5 and cfg["batch_size"] == 2
    assert cfg["task_dirs"] == {"acva": "/data/ACVA", "exams": "/data/EXAMS"}
    assert main(["--config", str(path), "--tasks", "nope", "--print-config"]) == 2
    assert "unknown task(s) nope" in capsys.readouterr().err
