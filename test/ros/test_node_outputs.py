"""End to end through real DDS: image + camera_info in -> every output, with headers, units and layouts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from node_harness import Client, make_rgb, start_node, stop_node

from d3_perception.geometry.pointcloud import unpack_rgb
from d3_perception.ros.conversions import msg_to_cloud, msg_to_numpy

pytestmark = pytest.mark.ros

H, W = 480, 640
SCALE, SHIFT = 4.0, 0.5


def _fixed_mode_node(ros_env, tmp_path, ckpt, **extra):
    params = {"backend": "python:fake_backends:gt", "checkpoint": str(ckpt), "metric.mode": "fixed",
              "metric.fixed_scale": SCALE, "metric.fixed_shift": SHIFT, "lazy_outputs": False,
              "cloud_max_range_m": 100.0, **extra}
    return start_node(ros_env, tmp_path, params)


def test_rgb8_frame_gives_every_output_with_input_header(ros_env, rclpy_context, tmp_path, fake_checkpoint):
    proc = _fixed_mode_node(ros_env, tmp_path, fake_checkpoint)
    client = Client(rclpy_context)
    try:
        assert client.wait_for_subscribers(30.0), "node never subscribed to image"
        rgb = make_rgb(H, W)
        stamp = 1000.25
        client.pub_info.publish(client.camera_info(H, W, stamp))
        client.wait_for_subscribers(10.0, client.pub_info)
        msg = None
        for _ in range(40):  # best-effort input: resend until the first frame is through
            client.pub_info.publish(client.camera_info(H, W, stamp))
            client.pub_image.publish(client.image_msg(rgb, "rgb8", stamp))
            msg = client.wait_stamp("points", stamp, 0.5)
            if msg is not None:
                break
        assert msg is not None, "no points output"
        for topic in Client.OUTPUTS:
            out = client.wait_stamp(topic, stamp, 5.0)
            assert out is not None, f"no {topic} with the input stamp"
            assert out.header.frame_id == "cam_optical_frame", topic

        expected_rel = rgb[..., 0].astype(np.float32) / 255.0
        rel_msg = client.by_stamp("depth/relative", stamp)
        assert rel_msg.encoding == "32FC1" and (rel_msg.height, rel_msg.width) == (H, W)
        np.testing.assert_allclose(msg_to_numpy(rel_msg), expected_rel, atol=1e-6)

        depth_msg = client.by_stamp("depth", stamp)  # REP-118: 32FC1 metres
        assert depth_msg.encoding == "32FC1"
        np.testing.assert_allclose(msg_to_numpy(depth_msg), SCALE * expected_rel + SHIFT, rtol=1e-5)

        conf_msg = client.by_stamp("depth/confidence", stamp)  # same size, stamp and frame as depth
        assert conf_msg.encoding == "32FC1" and (conf_msg.height, conf_msg.width) == (H, W)
        conf = msg_to_numpy(conf_msg)
        assert np.isfinite(conf).all() and conf.min() >= 0 and conf.max() <= 1.0

        info = client.by_stamp("depth/camera_info", stamp)
        assert (info.height, info.width) == (H, W) and info.k[0] == pytest.approx(0.8 * W)

        normals_msg = client.by_stamp("normals", stamp)
        assert normals_msg.encoding == "32FC3"
        normals = msg_to_numpy(normals_msg)  # [H,W,3]
        np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-5)
        # fake model: opengl +z (toward the viewer) -> optical frame -z (facing the camera)
        assert (normals[..., 2] < -0.99).all()

        cloud_msg = client.by_stamp("points", stamp)
        assert (cloud_msg.height, cloud_msg.width) == (H, W), "cloud must be organized"
        names = [(f.name, f.offset, f.datatype) for f in cloud_msg.fields]
        assert names == [("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("rgb", 12, 7), ("normal_x", 16, 7),
                         ("normal_y", 20, 7), ("normal_z", 24, 7)]
        assert cloud_msg.point_step == 32 and cloud_msg.row_step == 32 * W and not cloud_msg.is_bigendian
        assert cloud_msg.is_dense  # every pixel is within range here
        cloud = msg_to_cloud(cloud_msg)
        np.testing.assert_allclose(cloud["z"], SCALE * expected_rel + SHIFT, rtol=1e-5)
        f, cx = 0.8 * W, (W - 1) / 2
        np.testing.assert_allclose(cloud["x"][100, 600], (600 - cx) / f * cloud["z"][100, 600], rtol=1e-4)
        np.testing.assert_array_equal(unpack_rgb(cloud["rgb"]), rgb)

        colored = client.by_stamp("depth/colored", stamp)
        assert colored.encoding == "bgr8" and (colored.height, colored.width) == (H, W)
        near = (np.clip(np.float32(1.0) - expected_rel, 0, 1) * np.float32(255.0)).astype(np.uint8)
        np.testing.assert_array_equal(msg_to_numpy(colored), cv2.applyColorMap(near, cv2.COLORMAP_TURBO))

        pinfo = client.by_stamp("d3_perception_node/info", stamp)
        assert pinfo.backend == "fake_gt" and pinfo.model_id == "fake-gt" and pinfo.metric_mode == "fixed"
        assert pinfo.scale == pytest.approx(SCALE) and pinfo.shift == pytest.approx(SHIFT)
        assert pinfo.processing_width % 64 == 0 and pinfo.processing_width == 64
        assert pinfo.inference_ms >= 0 and pinfo.total_ms > 0
        assert np.isnan(pinfo.alignment_residual_m)
        assert 0 < pinfo.mean_confidence <= 1 and 0 <= pinfo.low_confidence_share <= 1
        assert np.isnan(pinfo.blended_share)  # temporal.blend 0: the stabiliser is off
        assert proc.poll() is None
    finally:
        client.close()
        assert stop_node(proc) == 0


def test_compressed_input_and_range_clip_make_invalid_points_nan(ros_env, rclpy_context, tmp_path, fake_checkpoint):
    proc = _fixed_mode_node(ros_env, tmp_path, fake_checkpoint, input_transport="compressed",
                            cloud_max_range_m=3.0, cloud_stride=2)
    client = Client(rclpy_context, outputs=["points", "depth"])
    try:
        assert client.wait_for_subscribers(30.0, client.pub_compressed)
        from sensor_msgs.msg import CompressedImage

        h, w = 240, 320
        rgb = make_rgb(h, w)
        ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        assert ok
        stamp = 2000.5
        msg = None
        for _ in range(40):
            client.pub_info.publish(client.camera_info(h, w, stamp))
            cm = CompressedImage(header=client.header(stamp), format="png", data=png.tobytes())
            client.pub_compressed.publish(cm)
            msg = client.wait_stamp("points", stamp, 0.5)
            if msg is not None:
                break
        assert msg is not None, "no cloud from compressed input"
        assert (msg.height, msg.width) == (h // 2, w // 2)  # stride 2, still organized
        cloud = msg_to_cloud(msg)
        z_expected = SCALE * rgb[::2, ::2, 0].astype(np.float32) / 255 + SHIFT
        x = cloud["x"]
        rng = np.sqrt(cloud["x"] ** 2 + cloud["y"] ** 2 + cloud["z"] ** 2)
        far = np.isnan(x)
        assert far.any() and not far.all()
        assert not msg.is_dense
        v, u = np.mgrid[0:h:2, 0:w:2]
        f = 0.8 * w
        ray_norm = np.sqrt(((u - (w - 1) / 2) / f) ** 2 + ((v - (h - 1) / 2) / f) ** 2 + 1)
        assert (z_expected[far] * ray_norm[far] > 3.0 - 1e-3).all()  # only points beyond 3 m were clipped
        assert (rng[~far] <= 3.0 + 1e-4).all()
        depth = msg_to_numpy(client.wait_stamp("depth", stamp, 5.0))
        np.testing.assert_allclose(depth, SCALE * rgb[..., 0].astype(np.float32) / 255 + SHIFT, rtol=1e-5)
    finally:
        client.close()
        assert stop_node(proc) == 0


def test_min_confidence_gates_exactly_the_low_confidence_pixels_in_depth_and_points(ros_env, rclpy_context,
                                                                                    tmp_path, fake_checkpoint):
    h, w, threshold = 120, 160, 0.5
    proc = _fixed_mode_node(ros_env, tmp_path, fake_checkpoint, min_confidence=threshold, cloud_confidence=True)
    client = Client(rclpy_context, outputs=["depth", "depth/confidence", "points"])
    try:
        assert client.wait_for_subscribers(30.0), "node never subscribed to image"
        rel = np.full((h, w), 0.25, np.float32)
        rel[:, w // 3:] = 0.75  # two fronto-parallel planes and a depth step between them
        rel[h // 2:, 2 * w // 3:] = 0.4
        rgb = make_rgb(h, w, rel)
        cloud_msg = None
        for i in range(40):
            # a stamp per frame: a frame processed before camera_info arrived has depth and confidence (without
            # the normals cue, which needs K) but no cloud; all three must come from the same frame
            stamp = 2000.5 + 0.01 * i
            client.pub_info.publish(client.camera_info(h, w, stamp, frame_id="cam_b"))
            client.pub_image.publish(client.image_msg(rgb, "rgb8", stamp, frame_id="cam_b"))
            cloud_msg = client.wait_stamp("points", stamp, 0.5)
            if cloud_msg is not None:
                break
        assert cloud_msg is not None, "no points output"
        conf_msg = client.wait_stamp("depth/confidence", stamp, 5.0)
        depth_msg = client.wait_stamp("depth", stamp, 5.0)
        assert conf_msg is not None and depth_msg is not None
        for msg in (conf_msg, depth_msg, cloud_msg):
            assert msg.header.frame_id == "cam_b"
        assert conf_msg.encoding == "32FC1" and (conf_msg.height, conf_msg.width) == (h, w)
        conf, depth, cloud = msg_to_numpy(conf_msg), msg_to_numpy(depth_msg), msg_to_cloud(cloud_msg)
        below = conf < np.float32(threshold)
        assert 0 < below.sum() < 0.2 * below.size  # the steps, not the planes
        np.testing.assert_array_equal(np.isnan(depth), below)
        expected = SCALE * (np.round(rel * 255) / 255).astype(np.float32) + SHIFT
        np.testing.assert_allclose(depth[~below], expected[~below], rtol=1e-5)
        np.testing.assert_array_equal(np.isnan(cloud["z"]), below)
        np.testing.assert_array_equal(cloud["confidence"], conf)
        assert not cloud_msg.is_dense
        assert proc.poll() is None
    finally:
        client.close()
        assert stop_node(proc) == 0
