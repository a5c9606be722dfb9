"""Test harness: ROS isolation for every ROS test, and the markers ros / launch / gpu / slow.

Every ROS test gets ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a ROS_DOMAIN_ID of its own (held with a
file lock, so concurrent pytest runs on one machine never share a domain), a temporary ROS_LOG_DIR and the
big shared-memory Fast DDS profile (images over 512 KB are otherwise lost on best-effort QoS).
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FASTDDS_PROFILE = REPO_ROOT / "config" / "fastdds_shm.xml"
_LOCK_DIR = Path(tempfile.gettempdir()) / "d3_perception_ros_domains"


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _ros_available() -> str | None:
    """None when rclpy and the built messages import, else the reason they do not."""
    if not _has_module("rclpy"):
        return "rclpy is not installed (run scripts/setup_env.sh)"
    if not _has_module("d3_perception.msg"):
        return "d3_perception.msg is not built (run scripts/setup_env.sh or colcon build)"
    return None


def _launch_available() -> str | None:
    if _has_module("launch_testing") and _has_module("launch_ros"):
        return None
    return ("ROS 2 launch / launch_ros / launch_testing are not on the package registries; "
            "this test runs on a full ROS 2 install")


def _cuda_available() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    return None if torch.cuda.is_available() else "no CUDA device"


def pytest_collection_modifyitems(config, items):
    reasons = {"ros": _ros_available(), "launch": _launch_available(), "gpu": _cuda_available()}
    for item in items:
        for marker, reason in reasons.items():
            if reason and item.get_closest_marker(marker):
                item.add_marker(pytest.mark.skip(reason=reason))


class _DomainLease:
    """A ROS_DOMAIN_ID in 1..100 held with an flock until released (or the process dies)."""

    def __init__(self) -> None:
        _LOCK_DIR.mkdir(exist_ok=True)
        start = os.getpid() % 100
        for k in range(100):
            domain = 1 + (start + k) % 100
            fd = os.open(_LOCK_DIR / f"{domain}.lock", os.O_CREAT | os.O_RDWR, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self.domain_id, self._fd = domain, fd
            return
        raise RuntimeError("no free ROS_DOMAIN_ID in 1..100")

    def release(self) -> None:
        os.close(self._fd)


def ros_environment(domain_id: int, log_dir: Path) -> dict[str, str]:
    """The variables every ROS process of a test gets (also used for subprocesses)."""
    return {
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_DOMAIN_ID": str(domain_id),
        "ROS_LOG_DIR": str(log_dir),
        "FASTDDS_DEFAULT_PROFILES_FILE": str(FASTDDS_PROFILE),
        "RCUTILS_LOGGING_BUFFERED_STREAM": "0",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def ros_env(tmp_path, monkeypatch):
    """Isolated ROS environment: sets os.environ for this test and returns the full env for subprocesses."""
    lease = _DomainLease()
    log_dir = tmp_path / "ros_log"
    log_dir.mkdir()
    extra = ros_environment(lease.domain_id, log_dir)
    for key, value in extra.items():
        monkeypatch.setenv(key, value)
    env = dict(os.environ)
    # Subprocesses import the checkout, whatever their working directory.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    yield env
    lease.release()


@pytest.fixture
def rclpy_context(ros_env):
    """An initialised rclpy Context on the test's private domain; shut down afterwards."""
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context, domain_id=int(ros_env["ROS_DOMAIN_ID"]))
    yield context
    if context.ok():
        rclpy.shutdown(context=context)


@pytest.fixture
def fake_checkpoint(tmp_path) -> Path:
    """A checkpoint directory for the test backends (``python:fake_backends:*``): a config.json, no weights."""
    import json

    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_id": "fake"}))
    return d


@pytest.fixture
def python_exe() -> str:
    return sys.executable


def default_sigint() -> None:
    """``preexec_fn`` for a child a test will signal: SIGINT back to its default disposition.

    A suite run as a background job (``pytest ... &``) inherits SIGINT as *ignored*, and so would every
    child; a test that stops a child with SIGINT must not depend on how pytest itself was started.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ignored_sigint() -> None:
    """``preexec_fn`` that starts a child the way a shell starts a background job: SIGINT ignored."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


_PROCESS_ISOLATION: dict[str, object] = {}  # the lease (held until exit) and the variables, set once


def isolate_this_process(log_prefix: str = "d3_ros_test_") -> dict[str, str]:
    """Make this process (and everything it launches) a private ROS world, whatever the caller's environment.

    For launch tests, which run outside the ``ros_env`` fixture (``launch_test FILE`` or pytest's
    launch_testing plugin): leases a free ROS_DOMAIN_ID (the same flock files as ``ros_env`` and d3-demo, held
    until the process exits), and sets ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a fresh ROS_LOG_DIR and the
    Fast DDS shared-memory profile in ``os.environ`` (launched processes and ``rclpy.init`` read it there).
    Call it at import time, before rclpy.init or any launch action. Returns the variables it set; later calls
    in the same process set the same ones again.
    """
    if not _PROCESS_ISOLATION:
        lease = _DomainLease()
        _PROCESS_ISOLATION["lease"] = lease
        _PROCESS_ISOLATION["env"] = ros_environment(lease.domain_id, Path(tempfile.mkdtemp(prefix=log_prefix)))
    env = dict(_PROCESS_ISOLATION["env"])
    os.environ.update(env)
    return env
