"""The bundled demo checkpoint: loadable, and its recorded quality (quality.json, quoted in README) is what it
really gives on the held-out frames of the wide world; it beats the trivial row ramp there (it sees geometry, not a
layout prior), and its recorded results on both held-out families (with the row ramp) are of the current
generator and are the numbers docs/training.md quotes. Issue 15's numeric targets are documented as not met
(docs/training.md), so they are not asserted here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

MODEL = Path(__file__).resolve().parents[2] / "models" / "d3_demo_tiny"
METRICS = ("abs_rel", "delta1", "normals_mean_deg")
# what the bundled model achieves against the row ramp (AbsRel, per family), rounded down: a weaker replacement
# (one that fell back to the layout prior) fails here
BELOW_RAMP = {"in_distribution": 0.35, "shift": 0.10}


def test_bundled_model_reproduces_its_recorded_quality_and_beats_the_row_ramp():
    from d3_training.evaluate import evaluate_checkpoint

    recorded = json.loads((MODEL / "quality.json").read_text())
    assert recorded["kind"] == "world"  # the top level is the in-distribution family
    measured = evaluate_checkpoint(MODEL, recorded["num_frames"], tuple(recorded["resolution"]), recorded["seed"],
                                   recorded["kind"], progress=False)
    for key in METRICS:
        # same frames, same weights: only float summation order may differ between CPUs
        assert measured[key] == pytest.approx(recorded[key], rel=1e-4, abs=1e-5), key
    ramp = measured["row_ramp"]
    assert measured["abs_rel"] <= (1 - BELOW_RAMP["in_distribution"]) * ramp["abs_rel"]
    assert measured["delta1"] > ramp["delta1"] and measured["normals_mean_deg"] < ramp["normals_mean_deg"]
    for family, margin in BELOW_RAMP.items():  # the shift family as recorded (measured again by the slow test)
        rec = recorded["families"][family]
        assert rec["abs_rel"] <= (1 - margin) * rec["row_ramp"]["abs_rel"], family
        assert rec["abs_rel"] < recorded["previous_model"][family]["abs_rel"], family  # better than the first model


def test_readme_quotes_the_recorded_quality():
    recorded = json.loads((MODEL / "quality.json").read_text())
    readme = (MODEL.parents[1] / "README.md").read_text()
    assert f"AbsRel {recorded['abs_rel']:.3f}" in readme
    assert f"δ1 {recorded['delta1']:.3f}" in readme
    assert f"{recorded['normals_mean_deg']:.1f}° mean normal error" in readme


def test_recorded_families_are_of_the_current_generator_and_quoted_in_the_docs():
    from d3_training.evaluate import EVAL_FAMILIES, frames_fingerprint, quality_table, same_frames

    families = json.loads((MODEL / "quality.json").read_text())["families"]
    assert set(families) == set(EVAL_FAMILIES)
    for name, kind in EVAL_FAMILIES.items():
        rec = families[name]
        assert rec["kind"] == kind and rec["num_frames"] == 200
        # same frames as when recorded: otherwise the numbers describe a generator that no longer exists
        assert same_frames(rec["frames_fingerprint"],
                           frames_fingerprint(rec["num_frames"], tuple(rec["resolution"]), rec["seed"], kind))
    docs = (MODEL.parents[1] / "docs" / "training.md").read_text()
    for line in quality_table({"model": families}).splitlines()[2:]:  # "| family | label | AbsRel | δ1 | normals |"
        family, _, *cells = (c.strip() for c in line.strip("|").split("|"))
        assert any(row.startswith(f"| {family} |") and row.endswith(" | ".join(cells) + " |")
                   for row in docs.splitlines()), line


@pytest.mark.slow
def test_bundled_model_reproduces_its_recorded_families():
    from d3_training.evaluate import evaluate_checkpoint

    for rec in json.loads((MODEL / "quality.json").read_text())["families"].values():
        measured = evaluate_checkpoint(MODEL, rec["num_frames"], tuple(rec["resolution"]), rec["seed"], rec["kind"],
                                       progress=False)
        for key in METRICS:
            assert measured[key] == pytest.approx(rec[key], rel=1e-4, abs=1e-5), (rec["kind"], key)
            assert measured["row_ramp"][key] == pytest.approx(rec["row_ramp"][key], rel=1e-4, abs=1e-5)


def test_demo_config_trains_on_the_wide_world_recipe_within_about_90_minutes():
    from d3_training.config import load_config

    cfg = load_config(MODEL.parents[1] / "config" / "train" / "demo.yaml")
    assert {(s.kind, s.scene_kind) for s in cfg.data.labeled} == {("synthetic", "world")}  # never the shift family
    caps = [phase.max_minutes for _, phase in cfg.schedule.phases()]
    assert all(c is not None for c in caps)
    assert sum(caps) + 5 <= 90  # plus export and the 2 x 200-frame evaluation
