"""Set-up shared by the benchmarks that start the real node as a process (``node_load.py``,
``multi_camera.py``): a scratch folder, the checkpoint (a tiny random one when none is given), a leased
``ROS_DOMAIN_ID`` and the isolated ROS environment of the tests (``test/conftest.py``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def node_process_setup(prefix: str, checkpoint: Path | None):
    """``(scratch folder, checkpoint, domain lease, environment)``; release the lease when done."""
    from conftest import _DomainLease, ros_environment

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    ckpt = checkpoint
    if ckpt is None:
        from d3_perception.model.checkpoint import build_random_checkpoint

        ckpt = build_random_checkpoint(tmp / "tiny")
    lease = _DomainLease()
    (tmp / "log").mkdir()
    env = {**os.environ, **ros_environment(lease.domain_id, tmp / "log")}
    return tmp, ckpt, lease, env
