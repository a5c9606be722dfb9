"""Trainer end to end on a tiny config: exact resume after SIGKILL, a kill during checkpoint writing,
export -> load -> predict, NaN guard, and two-process (gloo) data parallel through `accelerate launch`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from d3_training.pipeline import run_pipeline
from d3_training.testing import make_tiny_teacher, tiny_config
from d3_training.trainer import TrainingError, list_checkpoints

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable

EXTRA = {"schedule": {"name": "two_stage", "stage1": {"steps": 3, "batch_size": 2},
                      "stage2": {"steps": 6, "batch_size": 2, "decay": "linear", "agg_weight": 0.5,
                                 "ema_decay": 0.9}}}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_tiny_teacher(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory, teacher):
    """Uninterrupted reference run (stage1 3 steps, stage2 6 steps with L_agg and EMA), exported."""
    out = tmp_path_factory.mktemp("straight") / "run"
    exported = run_pipeline(tiny_config(out, teacher, **EXTRA))
    return out, exported


def _run_killed(run_dir: Path, teacher: Path, patch: str) -> subprocess.CompletedProcess:
    """Run the same config in a child process that SIGKILLs itself where `patch` says."""
    script = textwrap.dedent(f"""
        import os, signal
        from d3_training import trainer
        from d3_training.pipeline import run_pipeline
        from d3_training.testing import tiny_config
        {textwrap.indent(textwrap.dedent(patch), '        ').strip()}
        run_pipeline(tiny_config({str(run_dir)!r}, {str(teacher)!r}, **{EXTRA!r}), export=False)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([PY, "-c", script], env=env, capture_output=True, text=True, timeout=240)


def _assert_same_student(a: Path, b: Path) -> None:
    sa, sb = load_file(str(a / "stage2/final/student.safetensors")), load_file(str(b / "stage2/final/student.safetensors"))
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"parameters differ after resume: {different[:5]}"


def test_resume_after_sigkill_is_exact(tmp_path, teacher, straight):
    run_dir = tmp_path / "run"
    proc = _run_killed(run_dir, teacher, """
        orig = trainer.PhaseTrainer.save_checkpoint
        def save(self):
            out = orig(self)
            if self.name == "stage2" and self.state.step == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        trainer.PhaseTrainer.save_checkpoint = save
    """)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert [p.name for p in list_checkpoints(run_dir / "stage2/checkpoints")] == ["checkpoint-000003"]
    run_pipeline(tiny_config(run_dir, teacher), resume=True, export=False)  # config is read back from the run
    _assert_same_student(straight[0], run_dir)


def test_kill_while_writing_checkpoint_keeps_previous_loadable(tmp_path, teacher, straight):
    run_dir = tmp_path / "run"
    proc = _run_killed(run_dir, teacher, """
        orig = trainer._fsync_tree
        def fsync(path):
            if path.name.endswith("000006") and "stage2" in str(path):
                os.kill(os.getpid(), signal.SIGKILL)  # accelerate files written, not yet renamed
            orig(path)
        trainer._fsync_tree = fsync
    """)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ckpt_dir = run_dir / "stage2/checkpoints"
    assert (ckpt_dir / ".tmp-checkpoint-000006").is_dir()
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["checkpoint-000003"]
    run_pipeline(tiny_config(run_dir, teacher), resume=True, export=False)
    assert not (ckpt_dir / ".tmp-checkpoint-000006").exists()
    _assert_same_student(straight[0], run_dir)


def test_export_loads_and_predicts(straight):
    from d3_perception.model.checkpoint import load_pretrained

    run_dir, exported = straight
    model = load_pretrained(exported)
    student = load_file(str(run_dir / "stage2/final/student.safetensors"))
    assert model.config.tasks == ("depth", "normals")
    assert float(model.timestep) == pytest.approx(float(student["tau"]))
    assert torch.equal(model.unet.conv_out.weight, student["unet.conv_out.weight"])
    out = model.predict(np.random.default_rng(0).integers(0, 255, (1, 40, 56, 3), dtype=np.uint8))
    assert out["depth"].shape == (1, 40, 56) and out["normals"].shape == (1, 3, 40, 56)
    assert np.allclose(np.linalg.norm(out["normals"], axis=1), 1, atol=1e-3)
    assert (run_dir / "config.yaml").is_file() and len((run_dir / "git_sha.txt").read_text().strip()) >= 7


def test_repeated_nan_losses_raise(tmp_path, teacher, monkeypatch):
    from d3_training import phases

    monkeypatch.setattr(phases, "task_losses", lambda *a, **k: (torch.tensor(float("nan"), requires_grad=True), {}))
    cfg = tiny_config(tmp_path / "run", teacher, schedule={"name": "task_only", "stage2": {"steps": 5, "batch_size": 1}},
                      run={"max_consecutive_nan": 2})
    with pytest.raises(TrainingError, match="NaN/Inf for 2 consecutive steps"):
        run_pipeline(cfg, export=False)


def test_resume_from_missing_path_is_an_error(tmp_path):
    from d3_training.cli import main

    assert main(["--resume", str(tmp_path / "nope")]) == 2


@pytest.mark.slow
def test_two_process_gloo_data_parallel(tmp_path, teacher):
    """`accelerate launch --multi_gpu --num_processes 2` on a CPU-only machine runs torchrun -> gloo DDP:
    both ranks train, rank 0 writes one checkpoint and the export."""
    import yaml

    cfg = tiny_config(tmp_path / "run", teacher, schedule={"name": "joint", "joint": {"steps": 2, "batch_size": 1}})
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [PY, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "d3_training.cli", "--config", str(cfg_file), "-v"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x 2 processes = effective batch 2" in proc.stderr
    assert (tmp_path / "run/export/model.safetensors").is_file()
    assert [p.name for p in list_checkpoints(tmp_path / "run/joint/checkpoints")] == ["checkpoint-000002"]


def test_git_sha_is_read_in_a_plain_checkout_and_in_a_linked_worktree(tmp_path):
    """A run's provenance names its commit also when trained from `git worktree add` (its .git is a file)."""
    from d3_training.trainer import git_sha

    sha, other = "a" * 40, "b" * 40
    main = tmp_path / "main"
    (main / ".git" / "refs" / "heads").mkdir(parents=True)
    (main / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (main / ".git" / "refs" / "heads" / "main").write_text(sha + "\n")
    assert git_sha(main) == sha
    wt_git = main / ".git" / "worktrees" / "wt"
    wt_git.mkdir(parents=True)
    (wt_git / "commondir").write_text("../..\n")
    wt = tmp_path / "wt"
    wt.mkdir()
    (wt / ".git").write_text(f"gitdir: {wt_git}\n")
    (wt_git / "HEAD").write_text(other + "\n")  # detached
    assert git_sha(wt) == other
    (wt_git / "HEAD").write_text("ref: refs/heads/main\n")  # on a branch: the ref is in the main .git
    assert git_sha(wt) == sha
    assert git_sha(tmp_path / "nothing") == "unknown"
