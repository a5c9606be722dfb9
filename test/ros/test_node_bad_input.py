"""Bad-input matrix: one node process (plus one for compressed input) survives 30 kinds of bad input.

For each case the node stays alive, counts the kind in /diagnostics (``bad_input.<kind>``), logs a
warning naming the kind, and the next good frame still produces output. Valid-but-unusual inputs
(mono16 camera, big-endian 16UC1 reference) must simply work.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest
from conftest import _DomainLease, ros_environment
from node_harness import Client, make_rgb, node_log, start_node, stop_node

pytestmark = pytest.mark.ros

H, W = 48, 64
SCALE, SHIFT = 4.0, 0.5


class Harness:
    def __init__(self, client: Client, client_c: Client, proc, proc_c, ckpt):
        self.client, self.client_c, self.proc, self.proc_c, self.ckpt = client, client_c, proc, proc_c, ckpt
        self._stamp = 100.0

    def next_stamp(self) -> float:
        self._stamp += 1.0
        return self._stamp

    def rel(self):
        yy = np.linspace(0.1, 0.9, H, dtype=np.float32)[:, None]
        return np.broadcast_to(yy, (H, W)).copy()

    def good_frame(self, client=None, compressed=False, timeout_s=20.0):
        """Send one good frame (+camera_info) and return its depth/relative output (None if none)."""
        client = client or self.client
        stamp = self.next_stamp()
        rgb = make_rgb(H, W, self.rel())
        client.pub_info.publish(client.camera_info(H, W, stamp))
        if compressed:
            import cv2
            from sensor_msgs.msg import CompressedImage

            ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            client.pub_compressed.publish(CompressedImage(header=client.header(stamp), format="png",
                                                          data=png.tobytes()))
        else:
            client.pub_image.publish(client.image_msg(rgb, "rgb8", stamp))
        return client.wait_stamp("depth/relative", stamp, timeout_s)

    def bad_count(self, kind: str, client=None) -> int:
        d = (client or self.client).latest_diag()
        return int(d[2].get(f"bad_input.{kind}", 0)) if d else 0

    def wait_count_above(self, kind: str, before: int, client=None, timeout_s: float = 10.0) -> int:
        c = client or self.client
        c.wait_diag(lambda lvl, msg, v: int(v.get(f"bad_input.{kind}", 0)) > before, timeout_s)
        return self.bad_count(kind, c)


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    import rclpy
    from rclpy.context import Context

    tmp = tmp_path_factory.mktemp("bad_input")
    lease = _DomainLease()
    (tmp / "ros_log").mkdir()
    env_vars = ros_environment(lease.domain_id, tmp / "ros_log")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env_vars.items():
            mp.setenv(k, v)
        env = dict(os.environ)
        ckpt = tmp / "ckpt"
        ckpt.mkdir()
        (ckpt / "config.json").write_text(json.dumps({"model_id": "fake"}))
        common = {"backend": "python:fake_backends:gt", "checkpoint": str(ckpt), "lazy_outputs": False,
                  "qos_reliability": "reliable", "qos_depth": 10, "max_input_pixels": 1_000_000,
                  "diagnostics_period_s": 0.2, "cloud_max_range_m": 100.0, "stale_timeout_s": 600.0,
                  "max_consecutive_failures": 100}
        proc = start_node(env, tmp, {**common, "metric.mode": "sparse_depth", "metric.min_points": 20,
                                     "metric.smoothing": 0.0, "metric.sync_tolerance_s": 0.01},
                          namespace="m")
        proc_c = start_node(env, tmp, {**common, "input_transport": "compressed"}, namespace="mc")
        context = Context()
        rclpy.init(context=context, domain_id=lease.domain_id)
        outs = ["depth/relative", "depth/camera_info", "points", "d3_perception_node/info", "depth"]
        client = Client(context, "m", outputs=outs, reliable_input=True)
        client_c = Client(context, "mc", outputs=["depth/relative"], reliable_input=True)
        try:
            assert client.wait_for_subscribers(40.0), "node never subscribed: " + node_log(proc)
            assert client_c.wait_for_subscribers(40.0, client_c.pub_compressed), node_log(proc_c)
            client.wait_for_subscribers(10.0, client.pub_sparse)
            h = Harness(client, client_c, proc, proc_c, ckpt)
            assert h.good_frame() is not None, "first good frame gave no output: " + node_log(proc)
            assert h.good_frame(client_c, compressed=True) is not None, node_log(proc_c)
            yield h
        finally:
            client.close()
            client_c.close()
            rc, rc_c = stop_node(proc), stop_node(proc_c)
            rclpy.shutdown(context=context)
            lease.release()
    assert rc == 0 and rc_c == 0, "node did not exit cleanly on SIGINT"


# ---------------------------------------------------------------------------------------------- cases
def _image(h: Harness, **fields):
    """A good rgb8 message with some fields overridden."""
    c = h.client
    msg = c.image_msg(make_rgb(H, W, h.rel()), "rgb8", h.next_stamp())
    for k, v in fields.items():
        setattr(msg, k, v)
    return msg


def unknown_encoding(h):
    h.client.pub_image.publish(_image(h, encoding="bayer_xyz16"))


def data_short(h):
    msg = _image(h)
    msg.data = bytes(msg.data)[:-10]
    h.client.pub_image.publish(msg)


def data_long(h):
    msg = _image(h)
    msg.data = bytes(msg.data) + b"\0" * 64
    h.client.pub_image.publish(msg)


def step_too_small(h):
    msg = _image(h)
    msg.step = W * 3 - 3
    msg.data = bytes(msg.data)[: msg.step * H]
    h.client.pub_image.publish(msg)


def zero_width(h):
    h.client.pub_image.publish(_image(h, width=0, step=0, data=b""))


def zero_height(h):
    h.client.pub_image.publish(_image(h, height=0, data=b""))


def one_by_one(h):
    h.client.pub_image.publish(h.client.image_msg(np.zeros((1, 1, 3), np.uint8), "rgb8", h.next_stamp()))


def huge_header(h):
    # 8k x 8k by header with a few bytes of data: refused by header before any decoding
    h.client.pub_image.publish(_image(h, width=8192, height=8192, step=8192 * 3, data=b"\0" * 16))


def depth_encoding_on_image(h):
    h.client.pub_image.publish(h.client.image_msg(np.ones((H, W), np.float32), "32FC1", h.next_stamp()))


def corrupt_jpeg(h):
    from sensor_msgs.msg import CompressedImage

    data = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4  # JPEG magic, garbage body
    h.client_c.pub_compressed.publish(CompressedImage(header=h.client_c.header(h.next_stamp()), format="jpeg",
                                                      data=data))


def empty_compressed(h):
    from sensor_msgs.msg import CompressedImage

    h.client_c.pub_compressed.publish(CompressedImage(header=h.client_c.header(h.next_stamp()), format="jpeg"))


def huge_compressed(h):
    import cv2
    from sensor_msgs.msg import CompressedImage

    ok, png = cv2.imencode(".png", np.zeros((1100, 1000, 3), np.uint8))  # 1.1 MP > max_input_pixels
    h.client_c.pub_compressed.publish(CompressedImage(header=h.client_c.header(h.next_stamp()), format="png",
                                                      data=png.tobytes()))


def _info_then_frame(h, info):
    stamp = h.next_stamp()
    info.header = h.client.header(stamp)
    h.client.pub_info.publish(info)
    time.sleep(0.1)
    h.client.pub_image.publish(h.client.image_msg(make_rgb(H, W, h.rel()), "rgb8", stamp))
    return stamp


def k_all_zero(h):
    _info_then_frame(h, h.client.camera_info(H, W, 0, k=[0.0] * 9))


def k_nan(h):
    _info_then_frame(h, h.client.camera_info(H, W, 0, k=[float("nan")] * 9))


def k_negative_focal(h):
    _info_then_frame(h, h.client.camera_info(H, W, 0, k=[-50.0, 0, 32, 0, -50.0, 24, 0, 0, 1]))


def camera_info_size_scaled(h):
    # camera_info for the full 128x96 sensor, image binned to 64x48: intrinsics must be scaled by 1/2
    stamp = _info_then_frame(h, h.client.camera_info(2 * H, 2 * W, 0, f=100.0))
    info = h.client.wait_stamp("depth/camera_info", stamp, 10.0)
    assert info is not None and (info.height, info.width) == (H, W)
    assert info.k[0] == pytest.approx(50.0) and info.k[2] == pytest.approx((2 * W - 1) / 2 * 0.5 - 0.25)


def camera_info_aspect_mismatch(h):
    _info_then_frame(h, h.client.camera_info(H, 2 * W, 0))


def stamps_backwards(h):
    h.client.pub_image.publish(h.client.image_msg(make_rgb(H, W), "rgb8", 50.0))


def stamp_zero(h):
    h.client.pub_image.publish(h.client.image_msg(make_rgb(H, W), "rgb8", 0.0))


def frame_id_empty(h):
    stamp = h.next_stamp()
    h.client.pub_image.publish(h.client.image_msg(make_rgb(H, W), "rgb8", stamp, frame_id=""))
    out = h.client.wait_stamp("depth/relative", stamp, 10.0)
    assert out is not None and out.header.frame_id == ""  # copied as is, and counted


def _sparse_then_frame(h, sparse_msg_fn):
    stamp = h.next_stamp()
    h.client.pub_sparse.publish(sparse_msg_fn(stamp))
    time.sleep(0.1)
    h.client.pub_image.publish(h.client.image_msg(make_rgb(H, W, h.rel()), "rgb8", stamp))
    return stamp


def sparse_all_nan(h):
    _sparse_then_frame(h, lambda s: h.client.image_msg(np.full((H, W), np.nan, np.float32), "32FC1", s))


def sparse_all_zero(h):
    _sparse_then_frame(h, lambda s: h.client.image_msg(np.zeros((H, W), np.uint16), "16UC1", s))


def sparse_negative(h):
    _sparse_then_frame(h, lambda s: h.client.image_msg(np.full((H, W), -2.0, np.float32), "32FC1", s))


def sparse_other_aspect(h):
    _sparse_then_frame(h, lambda s: h.client.image_msg(np.ones((H, 2 * W), np.float32), "32FC1", s))


def sparse_wrong_encoding(h):
    _sparse_then_frame(h, lambda s: h.client.image_msg(np.ones((H, W, 3), np.uint8), "rgb8", s))


def sparse_16uc1_big_endian(h):
    """A valid big-endian 16UC1 reference must decode correctly: the metric fit recovers the scale."""
    rel = np.round(h.rel() * 255) / 255
    mm = np.round((SCALE * rel + SHIFT) * 1000).astype(">u2")

    def msg(stamp):
        m = h.client.image_msg(mm.astype(np.uint16), "16UC1", stamp)
        m.is_bigendian = 1
        m.data = mm.tobytes()
        return m

    stamp = _sparse_then_frame(h, msg)
    info = h.client.wait_stamp("d3_perception_node/info", stamp, 10.0)
    assert info is not None and info.alignment_points == H * W
    assert info.scale == pytest.approx(SCALE, rel=0.01) and info.shift == pytest.approx(SHIFT, abs=0.01)


def sparse_half_size(h):
    """A reference at half the image resolution (same aspect) is rescaled and still fits."""
    rel_half = np.round(h.rel()[::2, ::2] * 255) / 255
    stamp = _sparse_then_frame(h, lambda s: h.client.image_msg((SCALE * rel_half + SHIFT).astype(np.float32),
                                                               "32FC1", s))
    info = h.client.wait_stamp("d3_perception_node/info", stamp, 10.0)
    assert info is not None and info.alignment_points == (H // 2) * (W // 2)
    assert info.scale == pytest.approx(SCALE, rel=0.02)


def mono16_camera(h):
    stamp = h.next_stamp()
    img = (np.linspace(0, 65535, H * W).reshape(H, W)).astype(np.uint16)
    h.client.pub_image.publish(h.client.image_msg(img, "mono16", stamp))
    assert h.client.wait_stamp("depth/relative", stamp, 10.0) is not None, "mono16 frame was not processed"


def backend_raises(h):
    rgb = make_rgb(H, W)
    rgb[0, 0, 1] = 1  # the fake backend raises on this marker
    h.client.pub_image.publish(h.client.image_msg(rgb, "rgb8", h.next_stamp()))


def invalid_parameter(h):
    ok, reason = h.client.set_param("cloud_stride", 0)
    assert not ok and "cloud_stride" in reason
    ok, reason = h.client.set_param("metric.mode", "bogus")
    assert not ok and "metric.mode" in reason and "bogus" in reason
    ok, reason = h.client.set_param("cloud_min_range_m", 500.0)  # >= cloud_max_range_m (100)
    assert not ok and "cloud_max_range_m" in reason


def read_only_parameter(h):
    ok, reason = h.client.set_param("backend", "torch")
    assert not ok and "read-only" in reason


def _reconfigure_with(h, break_checkpoint, restore_checkpoint):
    c = h.client
    assert c.lifecycle("deactivate") and c.lifecycle("cleanup")
    break_checkpoint()
    assert not c.lifecycle("configure"), "configure must fail"
    assert c.lifecycle_state() == "unconfigured"
    d = c.wait_diag(lambda lvl, msg, v: lvl == 2, 10.0)
    assert d is not None and d[0] == 2 and "cannot load model" in d[1]
    restore_checkpoint()
    assert c.lifecycle("configure") and c.lifecycle("activate")
    c.wait_for_subscribers(20.0)


def checkpoint_missing(h):
    moved = h.ckpt.with_name("ckpt_moved")
    _reconfigure_with(h, lambda: h.ckpt.rename(moved), lambda: moved.rename(h.ckpt))


def checkpoint_corrupt(h):
    cfg = h.ckpt / "config.json"
    good = cfg.read_text()
    backup = h.ckpt.with_name("good_config.json")
    shutil.copy(cfg, backup)
    _reconfigure_with(h, lambda: cfg.write_text("{not json"), lambda: cfg.write_text(good))


CASES = [
    # (case, kind counted in diagnostics or None for valid input, compressed node?)
    (unknown_encoding, "image_decode", False),
    (data_short, "image_decode", False),
    (data_long, "image_decode", False),
    (step_too_small, "image_decode", False),
    (zero_width, "image_decode", False),
    (zero_height, "image_decode", False),
    (one_by_one, "image_decode", False),
    (huge_header, "image_too_large", False),
    (depth_encoding_on_image, "image_encoding", False),
    (corrupt_jpeg, "compressed_decode", True),
    (empty_compressed, "compressed_decode", True),
    (huge_compressed, "compressed_decode", True),
    (k_all_zero, "camera_info_invalid", False),
    (k_nan, "camera_info_invalid", False),
    (k_negative_focal, "camera_info_invalid", False),
    (camera_info_size_scaled, "camera_info_size", False),
    (camera_info_aspect_mismatch, "camera_info_size", False),
    (stamps_backwards, "stamp_backwards", False),
    (stamp_zero, "stamp_zero", False),
    (frame_id_empty, "frame_id_empty", False),
    (sparse_all_nan, "sparse_depth_empty", False),
    (sparse_all_zero, "sparse_depth_empty", False),
    (sparse_negative, "sparse_depth_empty", False),
    (sparse_other_aspect, "sparse_depth_size", False),
    (sparse_wrong_encoding, "sparse_depth_decode", False),
    (sparse_16uc1_big_endian, None, False),
    (sparse_half_size, None, False),
    (mono16_camera, None, False),
    (backend_raises, "model_error", False),
    (invalid_parameter, "parameter", False),
    (read_only_parameter, None, False),
    (checkpoint_missing, "configure", False),
    (checkpoint_corrupt, "configure", False),
]


@pytest.mark.parametrize("case,kind,compressed", CASES, ids=[c[0].__name__ for c in CASES])
def test_node_survives_bad_input(harness, case, kind, compressed):
    client = harness.client_c if compressed else harness.client
    proc = harness.proc_c if compressed else harness.proc
    before = harness.bad_count(kind, client) if kind else 0
    case(harness)
    if kind:
        after = harness.wait_count_above(kind, before, client)
        assert after > before, f"bad_input.{kind} not counted in /diagnostics"
        log = node_log(proc)
        assert f"bad input [{kind}]" in log or "cannot load model" in log, "no warning logged"
    assert proc.poll() is None, "node died: " + node_log(proc)[-2000:]
    out = harness.good_frame(client, compressed=compressed)
    assert out is not None, "the next good frame produced no output"
    assert proc.poll() is None
