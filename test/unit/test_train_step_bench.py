"""bench/train_step.py --breakdown runs against the current trainer (it builds a D3Phase and hooks its modules
directly, so a change there could break it silently). One timed step; no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_stage2_step_breakdown_accounts_for_the_whole_step():
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "train_step.py"), "--breakdown", "--resolution", "32",
                           "--batch", "2", "--repeats", "1", "--threads", "1"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    ms = out["median_ms"]
    parts = ("data", "forward", "backward", "optimizer")
    assert all(ms[k] > 0 for k in (*parts, "student_unet_forward", "vae_encoder_forward", "vae_decoder_forward"))
    assert abs(out["step_ms"] - sum(ms[k] for k in parts)) < 0.5  # the parts are the whole step
    # the hooked module forwards happen inside the forward part
    assert ms["student_unet_forward"] + ms["vae_encoder_forward"] + ms["vae_decoder_forward"] <= ms["forward"] + 0.5
