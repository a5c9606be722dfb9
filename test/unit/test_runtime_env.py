"""Importing d3_perception makes torch's OpenMP threads sleep instead of spin (17x faster inference on a
shared 2-core machine), unless the user chose a policy."""

from __future__ import annotations

import os
import subprocess
import sys


def _policy_seen_by_openmp(env_policy: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    probe = "import d3_perception, os, torch; torch.zeros(1); print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_passive_wait_policy_by_default():
    assert _policy_seen_by_openmp(None) == "PASSIVE"


def test_user_policy_wins():
    assert _policy_seen_by_openmp("ACTIVE") == "ACTIVE"
