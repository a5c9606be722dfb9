"""The confidence study's report: the generated section replaces only the text between its markers; bad
arguments end with a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from d3_perception.evaluation import confidence_study
from d3_perception.evaluation.confidence_report import MARK_BEGIN, MARK_END, write_plots, write_section

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results" / "confidence_study.json"


@pytest.mark.skipif(not RESULTS.exists(), reason="no stored study results")
def test_section_replaces_only_the_marked_text_and_plots_are_written(tmp_path):
    results = json.loads(RESULTS.read_text())
    doc = tmp_path / "confidence.md"
    doc.write_text(f"# hand-written\n\nplan text\n\n{MARK_BEGIN}\nold numbers\n{MARK_END}\n\ntail text\n")
    write_section(results, doc, tmp_path / "img", tmp_path / "r.json")
    text = doc.read_text()
    assert text.startswith("# hand-written\n\nplan text\n\n" + MARK_BEGIN)
    assert text.endswith(MARK_END + "\n\ntail text\n")
    assert "old numbers" not in text and text.count(MARK_BEGIN) == 1
    assert "| combined |" in text and f"`min_confidence` = {results['min_confidence']}" in text
    (tmp_path / "img").mkdir()
    names = write_plots(results, tmp_path / "img")
    assert all((tmp_path / "img" / n).stat().st_size > 1000 for n in names)


def test_bad_arguments_end_with_one_line_error(capsys):
    with pytest.raises(SystemExit) as exc:
        confidence_study.main(["--frames", "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("python -m d3_perception.evaluation.confidence_study: error:")
    assert confidence_study.main(["--checkpoint", "/nonexistent/ckpt"]) == 2


def test_node_defaults_are_scored_on_every_family_without_touching_the_doc(tmp_path, capsys):
    """--node-defaults: the node's own settings on rooms, outdoor and the wide world's two families; the gate
    never raises the flying share, and the doc section is left alone."""
    from d3_perception.geometry.confidence import DEFAULT_MIN_CONFIDENCE

    doc = tmp_path / "doc.md"
    doc.write_text("untouched\n")
    out = tmp_path / "nd.json"
    rc = confidence_study.main(["--node-defaults", "--frames", "2", "--height", "48", "--width", "64",
                                "--json", str(out), "--doc", str(doc)])
    assert rc == 0 and doc.read_text() == "untouched\n"
    result = json.loads(out.read_text())
    assert result["min_confidence"] == DEFAULT_MIN_CONFIDENCE
    assert set(result["families"]) == {"room (held-out seeds)", "outdoor (held-out family)",
                                       "world (held-out seeds)", "shift (held-out family)"}
    picked = result["picked_min_confidence"]
    assert 0 <= picked <= 1
    for row in result["families"].values():
        assert 0 < row["kept"] <= 1 and row["flying_after"] <= row["flying_before"] and row["reduction"] >= 1
        assert 0 <= row["ause_combined_over_random"] < 1
        # the picked threshold is applied to the same frames: a larger threshold keeps fewer points
        assert (row["at_picked"]["kept"] <= row["kept"]) == (picked >= DEFAULT_MIN_CONFIDENCE)
        assert row["by_threshold"][str(DEFAULT_MIN_CONFIDENCE)]["kept"] == row["kept"]
        kept = [v["kept"] for _, v in sorted(row["by_threshold"].items(), key=lambda kv: float(kv[0]))]
        assert kept == sorted(kept, reverse=True)  # a higher threshold never keeps more
    out = capsys.readouterr().out
    assert "world (held-out seeds): combined AUSE / random" in out
    assert f"min_confidence by the study's rule for this checkpoint (largest keeping >= 85 % on the tuning rooms): {picked}" in out


def test_edge_error_stand_in_has_its_errors_at_depth_edges():
    """The stand-in for a strong checkpoint: after the metric fit, the points more than 10 % off lie at depth
    edges of the ground truth, and there are few of them (a smeared edge, not a wrong layout)."""
    from test_geometry_confidence import _discontinuity_band

    from d3_perception.geometry.alignment import MetricAligner, MetricConfig
    from d3_perception.synthetic import SyntheticSequence

    seq = SyntheticSequence(seed=9999, size_hw=(96, 128), kind="world")
    frames = [seq.frame(i) for i in (0, 30, 60)]
    preds = confidence_study._EdgeErrors(1.5).predict(None, seq.K, frames)
    for f, (rel, normals) in zip(frames, preds, strict=True):
        assert rel.dtype == np.float32 and normals.shape == (3, *f.depth_m.shape)
        valid = f.valid & np.isfinite(f.depth_m)
        sparse = np.where(valid, f.depth_m, np.nan).astype(np.float32)
        depth = MetricAligner.apply(rel, MetricAligner(MetricConfig(mode="sparse_depth")).update(rel, sparse))
        wrong = valid & (np.abs(depth - f.depth_m) > 0.1 * f.depth_m)
        band = _discontinuity_band(np.where(valid, f.depth_m, np.nan), radius=4) | ~valid
        assert wrong.sum() < 0.1 * valid.sum()
        assert (wrong & band).sum() >= 0.9 * wrong.sum(), (wrong.sum(), (wrong & band).sum())


def test_edge_errors_run_records_the_stand_in_and_picks_a_higher_threshold(tmp_path, capsys):
    """--edge-errors: no checkpoint is loaded, the JSON says what was measured, and the rule's threshold for a
    model whose errors are only at edges is far above the bundled model's default (its confidence is high
    everywhere else); the option is refused without --node-defaults."""
    out = tmp_path / "ee.json"
    rc = confidence_study.main(["--node-defaults", "--edge-errors", "1.5", "--checkpoint", "/nonexistent",
                                "--frames", "3", "--height", "48", "--width", "64", "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["run"]["edge_errors_sigma_px"] == 1.5 and "checkpoint" not in result["run"]
    assert result["picked_min_confidence"] > 3 * result["min_confidence"]
    assert "for this stand-in" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        confidence_study.main(["--edge-errors", "1.5"])
    assert exc.value.code == 2
    assert "--edge-errors needs --node-defaults" in capsys.readouterr().err
