"""The confidence study's report: the generated section replaces only the text between its markers; bad
arguments end with a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

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
    for row in result["families"].values():
        assert 0 < row["kept"] <= 1 and row["flying_after"] <= row["flying_before"] and row["reduction"] >= 1
        assert 0 <= row["ause_combined_over_random"] < 1
    assert "world (held-out seeds): combined AUSE / random" in capsys.readouterr().out
