"""The per-frame benchmarks run against the current pipeline API (they import it directly, so a change there
can break them silently: bench/confidence.py did). Two frames each; no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, tmp_path: Path) -> dict:
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


def test_confidence_bench_times_the_nodes_confidence_path_beside_its_per_frame_work(tmp_path):
    result = _run("confidence.py", "--frames", "2", "--warmup", "1", tmp_path=tmp_path)
    for stage in ("confidence", "gate", "summary", "confidence+gate+summary", "node_overhead"):
        assert result[stage]["n"] == 2 and result[stage]["p50_ms"] > 0
    assert result["grid_step"] == 4 and result["resolution"] == "640x480"


def test_node_overhead_bench_compares_ours_with_the_peer_and_without_confidence(tmp_path):
    result = _run("node_overhead.py", "--frames", "2", "--peer-frames", "1", "--warmup", "1", "--compare-not-subscribed",
                  tmp_path=tmp_path)
    assert {"ours", "ours_without_confidence", "ours_confidence_not_subscribed"} <= set(result)
    assert "confidence_added_p50_ms" in result and "confidence_added_p50_ms_not_subscribed" in result
