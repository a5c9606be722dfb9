"""Messages built from the node's reused buffers carry them without copies (issue 6)."""

from __future__ import annotations

import numpy as np
import pytest

from d3_perception.geometry.pointcloud import CLOUD_DTYPE, fill_cloud
from d3_perception.ros.conversions import BufferPool, cloud_to_msg, msg_to_cloud, msg_to_numpy, numpy_to_msg

pytestmark = pytest.mark.ros


def test_image_computed_in_the_pool_is_published_without_a_copy():
    pool = BufferPool()
    buf, view = pool.view("depth", (6, 9), np.float32)
    view[:] = np.arange(54, dtype=np.float32).reshape(6, 9)
    msg = numpy_to_msg(view, "32FC1", None, pool, "depth")
    assert msg.data is buf  # the message holds the pool's buffer itself
    np.testing.assert_array_equal(msg_to_numpy(msg), view)
    other = numpy_to_msg(np.ones((6, 9), np.float32), "32FC1", None, pool, "depth")  # copied into the buffer
    assert other.data is buf and np.all(view == 1.0)


def test_cloud_built_in_the_pool_is_the_message_payload():
    pool = BufferPool()
    h, w = 5, 7
    buf, block = pool.float32_block("points", (h, w, CLOUD_DTYPE.itemsize // 4))
    K = np.array([[5.0, 0, 3.0], [0, 5.0, 2.0], [0, 0, 1]])
    depth = np.full((h, w), 2.0, np.float32)
    rgb = np.zeros((h, w, 3), np.uint8)
    normals = np.zeros((h, w, 3), np.float32)
    normals[..., 2] = -1.0
    cloud, dense = fill_cloud(depth, K, rgb, normals, max_range_m=10.0, out=block)
    msg = cloud_to_msg(cloud, None, buf, is_dense=dense)
    assert msg.data is buf and msg.is_dense and msg.point_step == 32
    back = msg_to_cloud(msg)
    np.testing.assert_array_equal(back["z"], depth)
    assert (back["normal_z"] == -1.0).all()
