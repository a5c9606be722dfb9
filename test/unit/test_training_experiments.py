"""The experiment runner end to end at smoke budget: every variant runs per seed, the table is written, and a
re-run resumes instead of retraining."""

from __future__ import annotations

import json

import pytest

from d3_training.experiments import Budget, run_all, table, variants
from d3_training.experiments.runner import QUICK, SMOKE


@pytest.mark.parametrize("budget", [Budget(), QUICK], ids=["full", "quick"])
def test_variants_cover_the_three_questions(budget):
    names = [v[0] for v in variants(budget)]
    assert {"two_stage", "task_only", "joint", "two_stage_half_data"} <= set(names)
    assert len(budget.teacher_budgets) >= 3 and len(budget.seeds) >= 3
    assert budget.default_teacher in budget.teacher_budgets
    assert 0 < budget.stage1_steps < budget.d3_steps
    half = dict((v[0], v[3]) for v in variants(budget))
    assert half["two_stage_half_data"] * 2 == half["task_only"]


def test_table_mean_and_std_over_seeds():
    rows = [{"variant": "a", "abs_rel": 0.1, "delta1": 0.9, "normals_mean_deg": 10.0},
            {"variant": "a", "abs_rel": 0.3, "delta1": 0.7, "normals_mean_deg": 20.0}]
    assert "| a | 2 | 0.200 ± 0.141 | 0.800 ± 0.141 | 15.0 ± 7.1 |" in table(rows)


def test_table_shows_the_shift_family_and_the_row_ramp_beside_the_model():
    ramp = {"abs_rel": 0.4, "delta1": 0.5, "normals_mean_deg": 50.0}
    shift_ramp = {"abs_rel": 0.6, "delta1": 0.3, "normals_mean_deg": 60.0}
    rows = [{"variant": "a", "abs_rel": 0.1, "delta1": 0.9, "normals_mean_deg": 10.0, "row_ramp": ramp,
             "shift": {"abs_rel": 0.2, "delta1": 0.8, "normals_mean_deg": 20.0, "row_ramp": shift_ramp}},
            {"variant": "a", "abs_rel": 0.3, "delta1": 0.7, "normals_mean_deg": 20.0, "row_ramp": ramp,
             "shift": {"abs_rel": 0.4, "delta1": 0.6, "normals_mean_deg": 30.0, "row_ramp": shift_ramp}}]
    md = table(rows)
    assert "| a | 2 | 0.200 ± 0.141 | 0.800 ± 0.141 | 15.0 ± 7.1 | 0.300 ± 0.141 | 0.700 ± 0.141 | 25.0 ± 7.1 |" in md
    assert "| row ramp (baseline) | – | 0.400 ± 0.000 | 0.500 ± 0.000 | 50.0 ± 0.0 | 0.600 ± 0.000 | 0.300 ± 0.000 | 60.0 ± 0.0 |" in md


@pytest.mark.slow
def test_smoke_study_runs_and_resumes(tmp_path):
    b = Budget(**{**SMOKE.__dict__, "seeds": (0, 1)})
    rows = run_all(b, tmp_path)
    assert len(rows) == 2 * len(variants(b))
    assert all(0 < r["abs_rel"] < 10 and 0 <= r["delta1"] <= 1 for r in rows)
    assert all(r["kind"] == "world" and r["shift"]["kind"] == "shift" and "abs_rel" in r["row_ramp"] for r in rows)
    md = (tmp_path / "results.md").read_text()
    assert "| two_stage | 2 |" in md and "| two_stage_teacher3 | 2 |" in md and "| row ramp (baseline) |" in md
    before = (tmp_path / "results.jsonl").read_text()
    run_all(b, tmp_path)  # everything finished: nothing retrains, nothing is appended
    assert (tmp_path / "results.jsonl").read_text() == before
    assert len([json.loads(x) for x in before.splitlines()]) == len(rows)
