"""d3-synth-bag: bags read back with rosbags carry the right topics, types, stamps and exact depth."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from d3_perception.geometry.units import m_to_mm
from d3_perception.image_codec import decode_image
from d3_perception.rosbag_io import (
    bag_summary,
    camera_info_to_K,
    decode_compressed,
    read_messages,
    stamp_to_ns,
)
from d3_perception.synthetic import SyntheticSequence
from d3_perception.synthetic.bag_cli import main

ARGS = ["--frames", "4", "--size", "40x30", "--fps", "5", "--seed", "2", "--no-progress"]
START_NS = 1_700_000_000 * 10**9


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_default_bag_round_trip(tmp_path, storage):
    out = tmp_path / "bag"
    assert main([str(out), *ARGS, "--storage", storage]) == 0
    summary = bag_summary(out)
    assert summary == {
        "/camera/camera_info": ("sensor_msgs/msg/CameraInfo", 4),
        "/camera/image": ("sensor_msgs/msg/Image", 4),
        "/camera/depth": ("sensor_msgs/msg/Image", 4),
        "/camera/normals": ("sensor_msgs/msg/Image", 4),
        "/camera/sparse_depth": ("sensor_msgs/msg/Image", 4),
    }
    seq = SyntheticSequence(2, (30, 40), 5.0, "room")
    by_topic: dict[str, list] = {}
    for topic, _msgtype, t_ns, msg in read_messages(out):
        assert t_ns == stamp_to_ns(msg.header)  # bag time = header stamp
        assert msg.header.frame_id == "camera_color_optical_frame"
        by_topic.setdefault(topic, []).append(msg)
    for topic, msgs in by_topic.items():
        assert [stamp_to_ns(m.header) for m in msgs] == [START_NS + i * 200_000_000 for i in range(4)], topic
    for i in (0, 3):
        frame = seq.frame(i)
        np.testing.assert_array_equal(decode_image(by_topic["/camera/image"][i]), frame.rgb)
        np.testing.assert_array_equal(decode_image(by_topic["/camera/depth"][i]), frame.depth_m)
        np.testing.assert_array_equal(decode_image(by_topic["/camera/normals"][i]), frame.normals)
        np.testing.assert_allclose(camera_info_to_K(by_topic["/camera/camera_info"][i]), frame.K)
        sparse = decode_image(by_topic["/camera/sparse_depth"][i])
        hit = np.isfinite(sparse)
        assert hit.any() and np.abs(sparse[hit] - frame.depth_m[hit]).max() < 0.1


def test_realsense_naming_16uc1_mm_and_compressed(tmp_path):
    out = tmp_path / "rs"
    assert main([str(out), *ARGS, "--realsense", "--compressed"]) == 0
    summary = bag_summary(out)
    assert summary["/camera/camera/color/image_raw/compressed"] == ("sensor_msgs/msg/CompressedImage", 4)
    assert summary["/camera/camera/color/camera_info"] == ("sensor_msgs/msg/CameraInfo", 4)
    assert summary["/camera/camera/aligned_depth_to_color/image_raw"] == ("sensor_msgs/msg/Image", 4)
    seq = SyntheticSequence(2, (30, 40), 5.0, "room")
    depth_msgs = [m for _, _, _, m in read_messages(out, ["/camera/camera/aligned_depth_to_color/image_raw"])]
    assert depth_msgs[1].encoding == "16UC1"
    mm = decode_image(depth_msgs[1])
    assert mm.dtype == np.uint16
    np.testing.assert_array_equal(mm, m_to_mm(seq.frame(1).depth_m))
    expect = seq.frame(1).depth_m
    np.testing.assert_allclose(mm / 1000.0, expect, atol=0.0005 + 1e-6)
    jpeg = next(m for _, _, _, m in read_messages(out, ["/camera/camera/color/image_raw/compressed"]))
    rgb = decode_compressed(jpeg)
    assert rgb.shape == (30, 40, 3)
    assert np.abs(rgb.astype(int) - seq.frame(0).rgb.astype(int)).mean() < 12  # JPEG at quality 90


def test_refuses_to_overwrite_unless_asked(tmp_path, capsys):
    out = tmp_path / "bag"
    out.mkdir()
    assert main([str(out), *ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already exists" in err and "--overwrite" in err
    assert main([str(out), *ARGS, "--overwrite"]) == 0
    assert bag_summary(out)["/camera/image"][1] == 4


@pytest.mark.parametrize("bad", [["--size", "40by30"], ["--frames", "0"], ["--fps", "-1"], ["--scene", "cave"]])
def test_bad_arguments_exit_non_zero(tmp_path, bad, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "b"), *bad])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("d3-synth-bag: error: ") and err.count("\n") == 0  # one line, no usage block
    assert not (tmp_path / "b").exists()


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "d3-synth-bag rs_bag --realsense" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("ros2") is None, reason="`ros2 bag info` needs a ROS 2 install")
def test_ros2_bag_info_reads_it(tmp_path):
    out = tmp_path / "bag"
    assert main([str(out), *ARGS]) == 0
    info = subprocess.run(["ros2", "bag", "info", str(out)], capture_output=True, text=True, timeout=60)
    assert info.returncode == 0 and re.search(r"Messages:\s+20\b", info.stdout)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_rosbag_io_pointcloud_round_trip_and_topic_rules(tmp_path, storage):
    from d3_perception.rosbag_io import BagWriter, cloud_from_msg

    cloud = np.zeros((3, 4), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4"), ("normal_x", "<f4")])
    cloud["x"] = np.arange(12, dtype=np.float32).reshape(3, 4)
    cloud["z"][0, 0] = np.nan
    with BagWriter(tmp_path / "b", storage=storage) as bag:
        bag.write_pointcloud("/points", cloud, 5, "map")
        with pytest.raises(ValueError, match="already carries"):
            bag.write_image("/points", np.zeros((2, 2), np.float32), "32FC1", 6, "map")
        with pytest.raises(ValueError, match="absolute topic"):
            bag.write_image("image", np.zeros((2, 2), np.float32), "32FC1", 6, "map")
        with pytest.raises(ValueError, match="`stamp_ns`"):
            bag.write_image("/img", np.zeros((2, 2), np.float32), "32FC1", -1, "map")
    (_, msgtype, t_ns, msg), = list(read_messages(tmp_path / "b"))
    assert msgtype == "sensor_msgs/msg/PointCloud2" and t_ns == 5 and not msg.is_dense
    back = cloud_from_msg(msg)
    assert back.shape == (3, 4) and back.dtype.names == cloud.dtype.names
    np.testing.assert_array_equal(back["x"], cloud["x"])
    assert np.isnan(back["z"][0, 0])
