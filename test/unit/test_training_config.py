"""Layered YAML configs, overrides and the `d3-train` CLI's one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from d3_training.cli import main
from d3_training.config import ConfigError, load_config


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_config_is_relative_to_the_including_file(tmp_path):
    _write(tmp_path / "bases/base.yaml", "run: {seed: 3, output_dir: out}\nschedule: {stage2: {steps: 7, lr: 0.1}}\n"
           "data: {labeled: [{kind: folder, path: data}]}\n")
    top = _write(tmp_path / "exp/top.yaml", "base_config: ../bases/base.yaml\nschedule: {stage2: {steps: 9}}\n")
    cfg = load_config(top, ["run.seed=5", "schedule.stage1.lr=1e-4", "data.labeled.0.weight=2"])
    assert cfg.run.seed == 5 and cfg.schedule.stage2.steps == 9 and cfg.schedule.stage2.lr == 0.1
    assert cfg.schedule.stage1.lr == 1e-4 and cfg.data.labeled[0].weight == 2.0
    assert cfg.data.labeled[0].path == str(tmp_path / "bases/data")  # paths relative to their file
    assert cfg.run.output_dir == str(tmp_path / "bases/out")


def test_bad_keys_and_values_name_the_key(tmp_path):
    cfg = _write(tmp_path / "c.yaml", "schedule: {stage2: {stpes: 3}}\n")
    with pytest.raises(ConfigError, match=r"unknown config key `schedule.stage2.stpes`; allowed: .*steps"):
        load_config(cfg)
    with pytest.raises(ConfigError, match="`schedule.name` must be one of"):
        load_config(None, ["schedule.name=three_stage"])
    with pytest.raises(ConfigError, match="`run.seed` must be an integer; got 'x'"):
        load_config(None, ["run.seed=x"])
    with pytest.raises(ConfigError, match="cycle"):
        load_config(_write(tmp_path / "loop.yaml", "base_config: loop.yaml\n"))
    # the runtime's list of normals conventions (geometry.normals), named in the error
    labeled = "data: {labeled: [{kind: folder, path: data, normals_convention: %s}]}\n"
    with pytest.raises(ConfigError, match=r"`normals_convention` must be one of \['opengl', 'optical'\]; got 'dx'"):
        load_config(_write(tmp_path / "n.yaml", labeled % "dx"))
    assert load_config(_write(tmp_path / "g.yaml", labeled % "opengl")).data.labeled[0].normals_convention == "opengl"


def test_shipped_configs_load():
    for name in ("debug", "demo", "official_depth", "official_normals", "workstation_24gb", "two_stage_sd21"):
        cfg = load_config(f"config/train/{name}.yaml")
        assert cfg.schedule.phases()


def test_cli_bad_key_is_one_line_exit_2(tmp_path, capsys):
    cfg = _write(tmp_path / "c.yaml", "base_config: /work/main/config/train/debug.yaml\nrun: {sede: 1}\n")
    assert main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("d3-train: error: unknown config key `run.sede`") and "\n" not in err


def test_cli_missing_data_path_is_one_line_exit_2(tmp_path, capsys):
    from d3_training.testing import make_tiny_teacher

    teacher = make_tiny_teacher(tmp_path / "t")
    code = main(["--config", "config/train/debug.yaml", f"run.output_dir={tmp_path / 'run'}",
                 f"model.teacher_path={teacher}", "schedule.vae=null", "schedule.teacher=null",
                 f"data.labeled=[{{kind: hypersim, path: {tmp_path / 'missing'}}}]"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "must be an existing directory" in err


def test_cli_refuses_to_overwrite_a_run(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run/config.yaml").write_text("{}\n")
    assert main(["--config", "config/train/debug.yaml", f"run.output_dir={tmp_path / 'run'}"]) == 2
    assert "must be a new folder" in capsys.readouterr().err


def test_cli_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "d3-train --resume runs/demo" in capsys.readouterr().out


def test_official_lr_schedule_log_warmup_then_linear_decay_to_zero():
    from d3_training.trainer import lr_lambda

    fn = lr_lambda(load_config("config/train/official_depth.yaml").schedule.joint)
    assert fn(0) == 0.0 and 0 < fn(99) < fn(999) < 1.0  # DeepSpeed log warmup over 2000 steps
    assert fn(2000) == pytest.approx(1.0) and fn(16000) == pytest.approx(0.5) and fn(30000) == 0.0
