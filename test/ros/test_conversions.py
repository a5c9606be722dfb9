"""Message conversions against rosbags-image (an independent implementation) and exact round trips."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from rosbags.image import message_to_cvimage

from d3_perception.geometry.pointcloud import make_cloud, unpack_rgb
from d3_perception.image_codec import to_rgb8
from d3_perception.ros.conversions import (
    ImageDecodeError,
    cloud_to_msg,
    compressed_size,
    compressed_to_rgb,
    info_to_image_k,
    msg_to_cloud,
    msg_to_numpy,
    numpy_to_msg,
    scaled_camera_info,
)

pytestmark = pytest.mark.ros

RNG = np.random.default_rng(0)
H, W = 7, 11  # odd sizes catch row/step mistakes

SAMPLES = {
    "rgb8": RNG.integers(0, 256, (H, W, 3), dtype=np.uint8),
    "bgr8": RNG.integers(0, 256, (H, W, 3), dtype=np.uint8),
    "rgba8": RNG.integers(0, 256, (H, W, 4), dtype=np.uint8),
    "bgra8": RNG.integers(0, 256, (H, W, 4), dtype=np.uint8),
    "mono8": RNG.integers(0, 256, (H, W), dtype=np.uint8),
    "mono16": RNG.integers(0, 65536, (H, W), dtype=np.uint16),
    "16UC1": RNG.integers(0, 65536, (H, W), dtype=np.uint16),
    "32FC1": RNG.normal(size=(H, W)).astype(np.float32),
    "32FC3": RNG.normal(size=(H, W, 3)).astype(np.float32),
}


@pytest.mark.parametrize("encoding", sorted(SAMPLES))
def test_round_trip_matches_rosbags_image(encoding):
    arr = SAMPLES[encoding]
    msg = numpy_to_msg(arr, encoding)
    assert msg.step == W * arr.itemsize * (arr.shape[2] if arr.ndim == 3 else 1) and msg.is_bigendian == 0
    np.testing.assert_array_equal(msg_to_numpy(msg), arr)
    np.testing.assert_array_equal(message_to_cvimage(msg), arr)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1", "32FC1", "32FC3"])
def test_big_endian_data_is_swapped_like_rosbags(encoding):
    arr = SAMPLES[encoding]
    msg = numpy_to_msg(arr, encoding)
    msg.is_bigendian = 1
    msg.data = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    ours = msg_to_numpy(msg)
    np.testing.assert_array_equal(ours, arr)
    assert ours.dtype.isnative
    np.testing.assert_array_equal(message_to_cvimage(msg), arr)


@pytest.mark.parametrize("encoding", ["rgb8", "mono16", "32FC3"])
def test_row_padding_is_removed(encoding):
    arr = SAMPLES[encoding]
    msg = numpy_to_msg(arr, encoding)
    pad = 13
    rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(H, msg.step)
    padded = np.concatenate([rows, np.full((H, pad), 0xAB, np.uint8)], axis=1)
    msg.step += pad
    msg.data = padded.tobytes()
    np.testing.assert_array_equal(msg_to_numpy(msg), arr)


@pytest.mark.parametrize("encoding", ["bgr8", "rgba8", "bgra8", "mono8"])
def test_to_rgb8_matches_rosbags_colour_conversion(encoding):
    msg = numpy_to_msg(SAMPLES[encoding], encoding)
    np.testing.assert_array_equal(to_rgb8(msg_to_numpy(msg), encoding), message_to_cvimage(msg, "rgb8"))


@pytest.mark.parametrize(
    "mutate, rule",
    [
        (dict(encoding="bayer_xyz"), "unsupported encoding"),
        (dict(step=W * 3 - 1), "`step`"),
        (dict(width=0), "positive"),
        (dict(data=b"\0" * 5), "`data`"),
    ],
)
def test_bad_image_fields_raise_naming_the_field(mutate, rule):
    msg = numpy_to_msg(SAMPLES["rgb8"], "rgb8")
    for k, v in mutate.items():
        setattr(msg, k, v)
    with pytest.raises(ImageDecodeError, match=rule):
        msg_to_numpy(msg)


def test_size_limit_is_checked_before_the_data():
    msg = numpy_to_msg(SAMPLES["rgb8"], "rgb8")
    msg.height, msg.width, msg.step = 8192, 8192, 8192 * 3  # data far too short: the limit must win
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        msg_to_numpy(msg, max_pixels=1_000_000)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_compressed_decode_matches_rosbags_and_header_size(ext):
    from sensor_msgs.msg import CompressedImage

    rgb = RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    msg = CompressedImage(format=ext[1:], data=buf.tobytes())
    ours = compressed_to_rgb(msg)
    np.testing.assert_array_equal(ours, message_to_cvimage(msg, "rgb8"))
    assert compressed_size(buf.tobytes()) == (37, 53)
    if ext == ".png":
        np.testing.assert_array_equal(ours, rgb)  # lossless
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        compressed_to_rgb(msg, max_pixels=100)


def test_compressed_empty_and_corrupt_raise():
    from sensor_msgs.msg import CompressedImage

    with pytest.raises(ImageDecodeError, match="empty"):
        compressed_to_rgb(CompressedImage(format="jpeg"))
    with pytest.raises(ImageDecodeError, match="could not decode"):
        compressed_to_rgb(CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0" + b"junk" * 50))


def test_cloud_message_layout_and_round_trip():
    pts = RNG.uniform(0.5, 3.0, (H, W, 3)).astype(np.float32)
    pts[0, 0] = np.nan
    rgb = SAMPLES["rgb8"]
    normals = RNG.normal(size=(H, W, 3)).astype(np.float32)
    cloud = make_cloud(pts, rgb, normals, max_range_m=100.0)
    from std_msgs.msg import Header

    msg = cloud_to_msg(cloud, Header(frame_id="cam"))
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (H, W, 32, 32 * W)
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb", "normal_x", "normal_y", "normal_z"]
    assert all(f.datatype == 7 and f.count == 1 for f in msg.fields)
    assert msg.is_dense is False and msg.header.frame_id == "cam"
    back = msg_to_cloud(msg)
    np.testing.assert_array_equal(back["z"], cloud["z"])
    np.testing.assert_array_equal(unpack_rgb(back["rgb"]), rgb)
    np.testing.assert_array_equal(back["normal_y"][1:], normals[1:, :, 1])
    dense = cloud_to_msg(make_cloud(pts[1:], max_range_m=100.0))
    assert dense.is_dense and dense.point_step == 16


def test_camera_info_scaling_keeps_projection_consistent():
    from sensor_msgs.msg import CameraInfo
    from std_msgs.msg import Header

    info = CameraInfo(height=480, width=640, distortion_model="plumb_bob", d=[0.1, 0, 0, 0, 0])
    info.k = [500.0, 0, 319.5, 0, 500.0, 239.5, 0, 0, 1]
    info.p = [500.0, 0, 319.5, -25.0, 0, 500.0, 239.5, 0, 0, 0, 1, 0]
    K, scaled = info_to_image_k(info, (240, 320))
    assert scaled and K[0, 0] == pytest.approx(250.0) and K[0, 2] == pytest.approx(159.5)
    out = scaled_camera_info(info, K, (240, 320), Header(frame_id="f"))
    assert (out.height, out.width) == (240, 320) and list(out.d) == [0.1, 0, 0, 0, 0]
    assert out.p[0] == pytest.approx(250.0) and out.p[3] == pytest.approx(-12.5)
    same, scaled = info_to_image_k(info, (480, 640))
    assert not scaled and same[0, 0] == 500.0
    with pytest.raises(ValueError, match="aspect ratio"):
        info_to_image_k(info, (480, 480))
    info.k = [0.0] * 9
    with pytest.raises(ValueError, match="focal"):
        info_to_image_k(info, (480, 640))
