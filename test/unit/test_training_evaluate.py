"""The held-out evaluation's row-ramp baseline and quality table, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from d3_training.evaluate import EVAL_FAMILIES, depth_metrics, quality_table, row_ramp


def test_row_ramp_is_far_at_the_top():
    np.testing.assert_array_equal(row_ramp((3, 2)), [[2, 2], [1, 1], [0, 0]])


def test_row_ramp_metrics_match_a_hand_computed_case():
    # ground truth: rows 4 m, 1 m, 1 m (a far wall above a near floor), 2 columns
    gt = np.array([[4.0, 4.0], [1.0, 1.0], [1.0, 1.0]], np.float32)
    valid = np.ones_like(gt, bool)
    # ramp x = 2, 1, 0 per row. LSQ fit of gt = s x + b over the 6 pixels:
    # mean x = 1, mean gt = 2; cov = sum (x-1)(gt-2) / 6 = (2*1*2 + 0 + 2*(-1)(-1)) / 6 = 1; var x = 4/6
    # s = 1.5, b = 2 - 1.5 = 0.5 -> aligned rows 3.5, 2.0, 0.5
    # AbsRel = mean(|3.5-4|/4, |2-1|/1, |0.5-1|/1) = (0.125 + 1 + 0.5) / 3 = 0.541666...
    # δ1: ratios max(3.5/4, 4/3.5) = 1.143 (< 1.25), 2.0 (no), 2.0 (no) -> 1/3
    abs_rel, delta1 = depth_metrics(row_ramp(gt.shape), gt, valid)
    assert abs_rel == pytest.approx(0.5416667, abs=1e-5)
    assert delta1 == pytest.approx(1 / 3)
    # a scene that IS a ramp (far at the top, linear in the row) is fitted exactly
    exact = np.array([[5.0, 5.0], [3.0, 3.0], [1.0, 1.0]], np.float32)
    assert depth_metrics(row_ramp(exact.shape), exact, valid) == pytest.approx((0.0, 1.0), abs=1e-6)


def test_quality_table_puts_old_new_and_ramp_rows_per_family():
    def fam(a, ramp):
        return {"abs_rel": a, "delta1": 0.9, "normals_mean_deg": 12.34, "row_ramp": {"abs_rel": ramp, "delta1": 0.5,
                                                                                     "normals_mean_deg": 50.0}}

    md = quality_table({"old": {"in_distribution": fam(0.3, 0.35), "shift": fam(0.4, 0.45)},
                        "new": {"in_distribution": fam(0.1, 0.35), "shift": fam(0.2, 0.45)}})
    lines = md.splitlines()
    assert set(EVAL_FAMILIES) == {"in_distribution", "shift"}
    assert "| in_distribution | old | 0.300 | 0.900 | 12.3 |" in lines
    assert "| in_distribution | new | 0.100 | 0.900 | 12.3 |" in lines
    assert "| in_distribution | row ramp | 0.350 | 0.500 | 50.0 |" in lines
    assert lines.index("| shift | row ramp | 0.450 | 0.500 | 50.0 |") == len(lines) - 1


def test_demo_reuses_a_recorded_previous_result_only_for_the_same_frames(tmp_path):
    import json

    from d3_training.demo import _previous_families
    from d3_training.evaluate import HELD_OUT_SEED, frames_fingerprint

    hw = (16, 16)
    assert _previous_families(tmp_path, 2, hw) is None  # nothing to replace
    (tmp_path / "model.safetensors").write_bytes(b"not a model")  # measuring it would fail
    fams = {name: {"abs_rel": 0.5, "frames_fingerprint": frames_fingerprint(2, hw, HELD_OUT_SEED, kind)}
            for name, kind in EVAL_FAMILIES.items()}
    (tmp_path / "quality.json").write_text(json.dumps({"families": fams}))
    assert _previous_families(tmp_path, 2, hw) == fams
    fams["shift"]["frames_fingerprint"][1][1] *= 1.01  # recorded on other frames: must be measured again
    (tmp_path / "quality.json").write_text(json.dumps({"families": fams}))
    with pytest.raises(ValueError, match="config.json"):  # the fake checkpoint cannot load: it was measured
        _previous_families(tmp_path, 2, hw)


def test_same_frames_tolerates_last_bit_noise_but_not_a_changed_frame():
    from d3_training.evaluate import same_frames

    base = [[1.0, 3.25, -0.1], [0.8, 12.5, 0.2]]
    assert same_frames(base, [[1.0, 3.25 * (1 + 1e-6), -0.1], [0.8, 12.5, 0.2 + 1e-7]])
    assert not same_frames(base, [[1.0, 3.3, -0.1], [0.8, 12.5, 0.2]])
    assert not same_frames(base, base[:1])


def test_vae_ceiling_shows_the_bundled_vae_is_not_what_limits_the_demo_model(tmp_path, capsys):
    """The exact labels through the bundled model's VAE alone score far above the model itself (so the student,
    not the VAE, limits it: docs/training.md), and an untrained VAE scores far below it: the ceiling measures
    the VAE, not the frames."""
    import json
    from pathlib import Path

    from d3_perception.model.checkpoint import build_random_checkpoint
    from d3_training.evaluate import evaluate_checkpoint, main, vae_ceiling

    bundled = str(Path(__file__).resolve().parents[2] / "models" / "d3_demo_tiny")
    ceiling = vae_ceiling(bundled, num_frames=12, progress=False)
    model = evaluate_checkpoint(bundled, num_frames=12, kind="world", progress=False)
    assert ceiling["abs_rel"] < 0.06 and ceiling["delta1"] > 0.95 and ceiling["normals_mean_deg"] < 15.0, ceiling
    assert ceiling["abs_rel"] < 0.5 * model["abs_rel"] and ceiling["normals_mean_deg"] < model["normals_mean_deg"]
    untrained = vae_ceiling(build_random_checkpoint(tmp_path / "random", preset="tiny", seed=0), num_frames=12,
                            progress=False)
    assert untrained["abs_rel"] > 2 * ceiling["abs_rel"] and untrained["normals_mean_deg"] > 30.0, untrained
    assert main([bundled, "--num-frames", "4", "--families", "--vae-ceiling", "--json", str(tmp_path / "c.json")]) == 0
    assert set(json.loads((tmp_path / "c.json").read_text())) == {"in_distribution", "shift"}
    capsys.readouterr()
