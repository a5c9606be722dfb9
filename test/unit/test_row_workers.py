"""RowWorkers (the node's postprocess_threads): results equal the one-thread ones, work the helper has not
started is taken over by the caller (never waited for), errors reach the caller, and a frame's tasks are all
settled when its block exits."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from d3_perception.geometry import intrinsics_from_fov
from d3_perception.geometry.normals import to_optical_frame_planes
from d3_perception.geometry.pointcloud import fill_cloud
from d3_perception.parallel import ROWS_PER_CHUNK, RowWorkers, for_row_chunks

RNG = np.random.default_rng(5)
HW = (ROWS_PER_CHUNK * 3 + 7, 40)
K = intrinsics_from_fov(HW, 65.0)


@pytest.fixture
def workers():
    made = []

    def make(threads):
        made.append(RowWorkers(threads))
        return made[-1]

    yield make
    for w in made:
        w.close()


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_row_chunks_cover_every_row_once_in_order(workers, threads):
    seen = []
    out = for_row_chunks(lambda r0, r1: seen.append((r0, r1)) or (r0, r1), HW[0], workers(threads))
    assert out == sorted(seen) and out[0][0] == 0 and out[-1][1] == HW[0]
    assert all(a[1] == b[0] for a, b in zip(out, out[1:], strict=False))
    assert len(out) % threads == 0 and len({r1 - r0 for r0, r1 in out[:-1]}) == 1


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("threads", [2, 3])
def test_cloud_and_normals_are_bit_identical_with_helpers(workers, threads, stride):
    depth = RNG.uniform(0.05, 30.0, HW).astype(np.float32)
    depth[5, 5], depth[300, 7] = np.nan, -2.0
    rgb = RNG.integers(0, 256, (*HW, 3), dtype=np.uint8)
    n = RNG.normal(size=(3, *HW)).astype(np.float32)
    w = workers(threads)
    ref_planes = to_optical_frame_planes(n, "opengl", K)
    planes = to_optical_frame_planes(n, "opengl", K, workers=w)
    for a, b in zip(ref_planes, planes, strict=True):
        np.testing.assert_array_equal(a, b)
    ref, ref_dense = fill_cloud(depth, K, rgb, ref_planes, stride=stride, min_range_m=0.5, max_range_m=20.0)
    cloud, dense = fill_cloud(depth, K, rgb, planes, stride=stride, min_range_m=0.5, max_range_m=20.0, workers=w)
    assert dense is ref_dense is False
    np.testing.assert_array_equal(cloud.view(np.uint8), ref.view(np.uint8))  # every byte, NaN payloads too


def test_one_thread_runs_everything_in_the_caller(workers):
    w = workers(1)
    me = threading.get_ident()
    task = w.submit(threading.get_ident)
    assert task.state == 2 and w.result(task) == me  # ran at submit
    assert w.map([threading.get_ident] * 3) == [me] * 3


def test_the_caller_takes_over_work_a_busy_helper_has_not_started(workers):
    w = workers(2)
    release, started = threading.Event(), threading.Event()

    def block():
        started.set()
        release.wait(10.0)
        return "blocked"

    slow = w.submit(block)
    assert started.wait(5.0)  # the only helper is stuck in `block`
    me = threading.get_ident()
    assert w.map([threading.get_ident] * 4) == [me] * 4  # all run here, no waiting on the helper
    queued = w.submit(threading.get_ident)
    assert w.result(queued) == me
    release.set()
    assert w.result(slow) == "blocked"


def test_errors_reach_the_caller_after_every_block_finished(workers):
    w = workers(2)
    done = []

    def ok(i):
        done.append(i)
        return i

    def bad():
        raise ValueError("row block failed")

    with pytest.raises(ValueError, match="row block failed"):
        w.map([lambda: ok(0), bad, lambda: ok(2), lambda: ok(3)])
    assert sorted(done) == [0, 2, 3]


def test_batch_settles_every_task_when_the_frame_fails(workers):
    w = workers(2)
    release, started = threading.Event(), threading.Event()
    ran = []

    def block():
        started.set()
        release.wait(10.0)
        ran.append("block")

    with pytest.raises(RuntimeError, match="frame failed"):
        with w.batch() as submit:
            submit(block)
            started.wait(5.0)
            submit(lambda: ran.append("never started"))
            threading.Timer(0.2, release.set).start()
            raise RuntimeError("frame failed")
    assert ran == ["block"]  # the running task finished before the block exited, the queued one was cancelled


def test_closed_workers_refuse_new_tasks():
    w = RowWorkers(2)
    assert w.result(w.submit(lambda: 7)) == 7
    w.close()
    with pytest.raises(RuntimeError, match="closed"):
        w.submit(lambda: 1)
    with pytest.raises(ValueError, match="`threads`"):
        RowWorkers(0)
