"""``d3-eval-bag`` end to end on bags written in-test (synthetic world, rosbags), in both storage formats.

Most tests use an *oracle* backend that returns an exact affine transform of the ground truth, so the expected
metrics are known (AbsRel 0, δ1 1, scale 10, shift 0.5); the launch-free round trip uses the real tiny model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from d3_perception.backends.base import Backend, BackendInfo
from d3_perception.evaluation import bag_cli
from d3_perception.geometry.units import m_to_mm, mm_to_m
from d3_perception.rosbag_io import BagWriter, cloud_from_msg, read_messages
from d3_perception.synthetic import SyntheticSequence

SCALE, SHIFT = 10.0, 0.5  # oracle: relative = (depth_m - SHIFT) / SCALE
T0_NS = 1_700_000_000_000_000_000
PERIOD_NS = 100_000_000  # 10 Hz


class OracleBackend(Backend):
    """Returns the relative depth / normals stored for the closest known image (robust to JPEG)."""

    def __init__(self, frames: list[dict]) -> None:
        self.frames = frames
        self.calls = 0
        self.info = BackendInfo("oracle", "cpu", "fp32", "oracle-model", ("depth", "normals"), 64)

    def predict(self, images, tasks=None):
        images = np.asarray(images)
        depth, normals = [], []
        for img in images:
            errs = [np.abs(img.astype(np.int16) - f["rgb"]).mean() for f in self.frames]
            f = self.frames[int(np.argmin(errs))]
            depth.append(f["rel"])
            normals.append(np.moveaxis(f["normals"], -1, 0))
        self.calls += 1
        return {"depth": np.stack(depth).astype(np.float32), "normals": np.stack(normals).astype(np.float32)}


def make_bag(path: Path, storage: str = "mcap", *, n: int = 6, size_hw=(48, 64), depth_encoding: str = "32FC1",
             compressed: bool = False, gt_offset_ns: int = 2_000_000, drop_gt=(3,), extra_gt: bool = True,
             sparse: bool = False, normals: bool = True, extra_depth_topic: bool = False,
             confidence_topic: bool = False) -> list[dict]:
    """A synthetic camera bag; returns per-frame oracle data (rgb, rel, normals)."""
    seq = SyntheticSequence(seed=0, size_hw=size_hw, fps=10, kind="room")
    frames = []
    with BagWriter(path, storage=storage) as bag:
        for i in range(n):
            f = seq.frame(i)
            stamp = T0_NS + i * PERIOD_NS
            gt_m = np.where(f.valid, f.depth_m, np.nan).astype(np.float32)
            if depth_encoding in ("16UC1", "compressedDepth16"):
                gt_mm = m_to_mm(gt_m)
                gt_m = mm_to_m(gt_mm)  # what the evaluator will read back
            elif depth_encoding == "compressedDepth32":  # quantised inverse depth, as image_transport stores it
                v = np.where(np.isfinite(gt_m), np.round(1000.0 / np.nan_to_num(gt_m, nan=1.0) + 5.0), 0).astype(np.uint16)
                gt_m = np.where(v > 0, np.float32(1000.0) / (v.astype(np.float32) - np.float32(5.0)), np.nan).astype(np.float32)
            if compressed:
                bag.write_compressed_image("/cam/image/compressed", f.rgb, stamp, "cam_optical", fmt="png")
            else:
                bag.write_image("/cam/image", f.rgb, "rgb8", stamp, "cam_optical")
            bag.write_camera_info("/cam/camera_info", f.K, size_hw, stamp, "cam_optical")
            if i not in drop_gt:
                gt_stamp = stamp + gt_offset_ns
                if depth_encoding.startswith("compressedDepth"):
                    _write_compressed_depth(bag, gt_mm if depth_encoding.endswith("16") else v,
                                            "16UC1" if depth_encoding.endswith("16") else "32FC1", gt_stamp)
                elif depth_encoding == "16UC1":
                    bag.write_image("/cam/depth", gt_mm, "16UC1", gt_stamp, "cam_optical")
                else:
                    bag.write_image("/cam/depth", gt_m, "32FC1", gt_stamp, "cam_optical")
                if extra_depth_topic:
                    bag.write_image("/cam/depth_registered", gt_m, "32FC1", gt_stamp, "cam_optical")
                if confidence_topic:  # the node's depth/confidence, also 32FC1: never ground truth
                    bag.write_image("/cam/depth/confidence", np.ones(size_hw, np.float32), "32FC1", gt_stamp,
                                    "cam_optical")
            if sparse:
                sp = np.full(size_hw, np.nan, np.float32)
                sp[::3, ::3] = gt_m[::3, ::3]
                bag.write_image("/cam/sparse_depth", sp, "32FC1", stamp, "cam_optical")
            if normals:
                bag.write_image("/cam/normals_gt", f.normals.astype(np.float32), "32FC3", stamp, "cam_optical")
            rel = np.where(np.isfinite(gt_m), (gt_m - SHIFT) / SCALE, 1.0).astype(np.float32)
            frames.append({"rgb": f.rgb.astype(np.int16), "rel": rel, "normals": f.normals, "stamp": stamp})
        if extra_gt:  # ground truth with no image
            bag.write_image("/cam/depth", np.ones(size_hw, np.float32), "32FC1", T0_NS + n * PERIOD_NS + 50_000_000,
                            "cam_optical")
    return frames


def _write_compressed_depth(bag, png16: np.ndarray, fmt: str, stamp: int) -> None:
    """image_transport compressedDepth: 12-byte header (int32 format, float32 A, float32 B) + 16-bit PNG."""
    import struct

    import cv2

    from d3_perception.rosbag_io import COMPRESSED_TYPE, _header, typestore

    ok, png = cv2.imencode(".png", png16)
    assert ok
    data = struct.pack("<iff", 0, 1000.0, 5.0) + png.tobytes()
    msg = typestore().types[COMPRESSED_TYPE](header=_header(stamp, "cam_optical"), format=f"{fmt}; compressedDepth png",
                                             data=np.frombuffer(data, np.uint8))
    bag.write_message("/cam/depth/compressedDepth", COMPRESSED_TYPE, msg, stamp)


def run_cli(monkeypatch, capsys, argv, backend=None):
    if backend is not None:
        monkeypatch.setattr(bag_cli, "_create_backend", lambda args: backend)
    rc = bag_cli.main([*argv, "--no-progress"])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_oracle_per_frame_metrics_counts_and_report(tmp_path, monkeypatch, capsys, storage):
    frames = make_bag(tmp_path / "bag", storage)
    out = tmp_path / "out"
    rc, stdout, err = run_cli(monkeypatch, capsys, [str(tmp_path / "bag"), "--checkpoint", "x", "--out", str(out),
                                                    "--normals-topic", "/cam/normals_gt"], OracleBackend(frames))
    assert rc == 0, err
    report = json.loads((out / "metrics.json").read_text())
    assert report["status"] == "complete"
    assert report["topics"]["image"] == "/cam/image" and report["topics"]["depth"] == "/cam/depth"
    assert report["topics"]["camera_info"] == "/cam/camera_info"
    c = report["counts"]
    assert (c["matched"], c["evaluated"], c["unmatched_frames"], c["unmatched_gt"]) == (5, 5, 1, 1)
    assert c["match_dt_ms"]["max"] == pytest.approx(2.0)
    agg = report["aggregate"]
    assert agg["abs_rel"] < 1e-5 and agg["delta1"] == 1.0 and agg["rmse"] < 1e-4
    for fr in report["frames"]:
        assert fr["fit_scale"] == pytest.approx(SCALE, rel=1e-4) and fr["fit_shift"] == pytest.approx(SHIFT, abs=1e-4)
    assert report["drift"]["fit_scale"]["std"] < 1e-3
    assert report["normals"]["mean"] < 0.1 and report["normals"]["a11.25"] == 1.0
    assert report["valid_fraction"]["gt"] == pytest.approx(1.0)
    for name in ("report.md", "per_frame.csv", "metrics_over_time.png", "error_histogram.png", "absrel_by_depth.png",
                 "scale_over_time.png", "montage.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "per_frame.csv").read_text().count("\n") == 6  # header + 5 frames
    assert "AbsRel" in stdout and "5 frames" in stdout
    assert "INCOMPLETE" not in (out / "report.md").read_text()


def test_global_fixed_and_wrong_scale_modes(tmp_path, monkeypatch, capsys):
    frames = make_bag(tmp_path / "bag", "mcap", normals=False)
    oracle = OracleBackend(frames)
    base = [str(tmp_path / "bag"), "--checkpoint", "x", "--no-plots"]
    rc, _, err = run_cli(monkeypatch, capsys, [*base, "--metric-mode", "global", "--out", str(tmp_path / "g")], oracle)
    assert rc == 0, err
    g = json.loads((tmp_path / "g" / "metrics.json").read_text())
    assert g["global_fit"]["scale"] == pytest.approx(SCALE, rel=1e-5) and g["aggregate"]["abs_rel"] < 1e-5
    rc, _, err = run_cli(monkeypatch, capsys, [*base, "--metric-mode", "fixed", "--scale", "10", "--shift", "0.5",
                                               "--out", str(tmp_path / "f")])
    assert rc == 0, err
    f = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert f["aggregate"]["abs_rel"] < 1e-5 and f["drift"]["applied_scale"]["mean"] == 10.0
    rc, _, err = run_cli(monkeypatch, capsys, [*base, "--metric-mode", "fixed", "--scale", "11", "--shift", "0.5",
                                               "--out", str(tmp_path / "w")])
    w = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert rc == 0 and 0.05 < w["aggregate"]["abs_rel"] < 0.1  # 10 % too far, minus the shift


def test_global_mode_writes_metric_depth_and_points_from_the_global_fit(tmp_path, monkeypatch, capsys):
    frames = make_bag(tmp_path / "bag", "sqlite3", n=4, drop_gt=(), extra_gt=False)
    rc, _, err = run_cli(monkeypatch, capsys, [str(tmp_path / "bag"), "--checkpoint", "x", "--no-plots",
                                               "--metric-mode", "global", "--out", str(tmp_path / "o"),
                                               "--write-bag", str(tmp_path / "w"), "--write-storage", "mcap"],
                         OracleBackend(frames))
    assert rc == 0, err
    assert next((tmp_path / "w").glob("*.mcap"))  # --write-storage overrides the input's sqlite3
    def stamp(m):
        return m.header.stamp.sec * 10**9 + m.header.stamp.nanosec

    gt = {stamp(m): m for _, _, _, m in read_messages(tmp_path / "bag", ["/cam/depth"])}
    depth = [m for _, _, _, m in read_messages(tmp_path / "w", ["/d3/depth"])]
    clouds = [cloud_from_msg(m) for _, _, _, m in read_messages(tmp_path / "w", ["/d3/points"])]
    assert len(depth) == len(clouds) == 4
    for msg, cloud in zip(depth, clouds, strict=True):
        # the global scale/shift is the oracle's exact affine map, so the written metres equal the GT (2 ms later)
        ref = np.frombuffer(gt[stamp(msg) + 2_000_000].data, np.float32).reshape(48, 64)
        written = np.frombuffer(msg.data, np.float32).reshape(48, 64)
        np.testing.assert_allclose(written, ref, rtol=1e-4)
        np.testing.assert_allclose(cloud["z"], written, rtol=1e-6)  # points are back-projected from that depth


def test_sparse_depth_mode_uses_the_nodes_aligner(tmp_path, monkeypatch, capsys):
    frames = make_bag(tmp_path / "bag", "sqlite3", sparse=True, normals=False)
    rc, _, err = run_cli(monkeypatch, capsys, [str(tmp_path / "bag"), "--checkpoint", "x", "--no-plots",
                                               "--metric-mode", "sparse_depth", "--out", str(tmp_path / "s")],
                         OracleBackend(frames))
    assert rc == 0, err
    s = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert s["topics"]["sparse"] == "/cam/sparse_depth"  # auto-detected by name
    assert s["aggregate"]["abs_rel"] < 1e-3
    assert s["drift"]["applied_scale"]["mean"] == pytest.approx(SCALE, rel=1e-3)


@pytest.mark.parametrize("encoding", ["compressedDepth16", "compressedDepth32"])
def test_compressed_depth_ground_truth(tmp_path, monkeypatch, capsys, encoding):
    frames = make_bag(tmp_path / "bag", "mcap", depth_encoding=encoding, normals=False, extra_gt=False)
    rc, _, err = run_cli(monkeypatch, capsys, [str(tmp_path / "bag"), "--checkpoint", "x", "--no-plots",
                                               "--out", str(tmp_path / "o")], OracleBackend(frames))
    assert rc == 0, err
    r = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert r["topics"]["depth"] == "/cam/depth/compressedDepth" and r["topics"]["image"] == "/cam/image"
    assert r["counts"]["evaluated"] == 5 and r["aggregate"]["abs_rel"] < 1e-5


def test_compressed_images_and_16uc1_ground_truth(tmp_path, monkeypatch, capsys):
    frames = make_bag(tmp_path / "bag", "mcap", compressed=True, depth_encoding="16UC1", normals=False)
    rc, _, err = run_cli(monkeypatch, capsys, [str(tmp_path / "bag"), "--checkpoint", "x", "--no-plots",
                                               "--out", str(tmp_path / "o"), "--batch-size", "2"], OracleBackend(frames))
    assert rc == 0, err
    r = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert r["topics"]["image"] == "/cam/image/compressed"
    assert r["counts"]["evaluated"] == 5 and r["aggregate"]["abs_rel"] < 1e-5


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from d3_perception.model import build_random_checkpoint

    return build_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", preset="tiny", tasks=("depth", "normals"))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_write_bag_then_pred_topic_gives_identical_metrics(tmp_path, monkeypatch, capsys, tiny_checkpoint, storage):
    """Launch-free path: model on a raw bag with --write-bag, then the written predictions with --pred-topic."""
    make_bag(tmp_path / "raw", storage, n=4, drop_gt=(), extra_gt=False)
    rc, _, err = run_cli(monkeypatch, capsys, [str(tmp_path / "raw"), "--checkpoint", str(tiny_checkpoint),
                                               "--backend", "torch", "--no-plots", "--out", str(tmp_path / "a"),
                                               "--normals-topic", "/cam/normals_gt", "--write-bag", str(tmp_path / "pred")])
    assert rc == 0, err
    # the written bag: node topics with the input's stamps and frame ids, readable with rosbags
    msgs = list(read_messages(tmp_path / "pred"))
    by_topic: dict[str, list] = {}
    for topic, msgtype, t_ns, msg in msgs:
        by_topic.setdefault(topic, []).append((msgtype, t_ns, msg))
    in_stamps = [T0_NS + i * PERIOD_NS for i in range(4)]
    expected = {"/d3/depth/relative": ("sensor_msgs/msg/Image", "32FC1"), "/d3/depth": ("sensor_msgs/msg/Image", "32FC1"),
                "/d3/normals": ("sensor_msgs/msg/Image", "32FC3"), "/d3/points": ("sensor_msgs/msg/PointCloud2", None),
                "/d3/depth/camera_info": ("sensor_msgs/msg/CameraInfo", None)}
    for topic, (msgtype, enc) in expected.items():
        got = by_topic[topic]
        assert len(got) == 4, topic
        assert all(m[0] == msgtype for m in got)
        assert [m[2].header.stamp.sec * 10**9 + m[2].header.stamp.nanosec for m in got] == in_stamps
        assert {m[2].header.frame_id for m in got} == {"cam_optical"}
        if enc:
            assert {m[2].encoding for m in got} == {enc}
    assert len(by_topic["/cam/image"]) == 4 and len(by_topic["/cam/depth"]) == 4  # inputs copied once each
    cloud = cloud_from_msg(by_topic["/d3/points"][0][2])
    assert cloud.shape == (48, 64)
    assert {"x", "y", "z", "rgb", "normal_x", "normal_y", "normal_z"} <= set(cloud.dtype.names)
    assert np.isfinite(cloud["z"]).any()
    # same GT, recorded predictions, no model: identical metrics
    monkeypatch.setattr(bag_cli, "_create_backend", lambda args: pytest.fail("no model may run with --pred-topic"))
    rc, _, err = run_cli(monkeypatch, capsys, [str(tmp_path / "pred"), "--pred-topic", "/d3/depth/relative",
                                               "--pred-normals-topic", "/d3/normals", "--normals-topic", "/cam/normals_gt",
                                               "--no-plots", "--out", str(tmp_path / "b")])
    assert rc == 0, err
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert b["topics"]["depth"] == "/cam/depth"  # /d3/depth (a prediction) is not mistaken for ground truth
    assert a["counts"]["evaluated"] == b["counts"]["evaluated"] == 4
    assert a["aggregate"] == b["aggregate"]
    assert [f["metrics"] for f in a["frames"]] == [f["metrics"] for f in b["frames"]]
    assert a["aggregate"]["abs_rel"] > 0  # a random model: the comparison is not 0 == 0
    assert b["normals"]["mean"] == pytest.approx(a["normals"]["mean"], rel=1e-4)  # normals recorded in optical frame
    assert b["latency_ms"]["recorded_stamp_to_bag"]["p50"] == 0.0  # written at the input's bag time


# ------------------------------------------------------------------------------------------ bad input
def _one_line_error(rc, err, *needles):
    assert rc == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_missing_bag_and_missing_checkpoint(tmp_path, monkeypatch, capsys):
    rc, _, err = run_cli(monkeypatch, capsys, [str(tmp_path / "nope"), "--checkpoint", "x"], OracleBackend([]))
    _one_line_error(rc, err, "does not exist")
    make_bag(tmp_path / "bag", "mcap", n=2, normals=False)
    from d3_perception import cli_args

    monkeypatch.setattr(cli_args, "bundled_demo_checkpoint", lambda: None)  # else the demo model runs
    rc, _, err = run_cli(monkeypatch, capsys, [str(tmp_path / "bag")])
    _one_line_error(rc, err, "--checkpoint")


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_corrupt_and_truncated_bags(tmp_path, monkeypatch, capsys, storage):
    junk = tmp_path / ("junk.mcap" if storage == "mcap" else "junk.db3")
    junk.write_bytes(b"\x89MCAP0\r\n" + bytes(range(256)) * 20)
    rc, _, err = run_cli(monkeypatch, capsys, [str(junk), "--checkpoint", "x", "--out", str(tmp_path / "j")],
                         OracleBackend([]))
    _one_line_error(rc, err, "cannot be read")
    frames = make_bag(tmp_path / "bag", storage, normals=False)
    (data_file,) = [p for p in (tmp_path / "bag").iterdir() if p.suffix in (".mcap", ".db3")]
    cut = tmp_path / f"cut{data_file.suffix}"
    cut.write_bytes(data_file.read_bytes()[: data_file.stat().st_size * 2 // 3])
    rc, _, err = run_cli(monkeypatch, capsys, [str(cut), "--checkpoint", "x", "--out", str(tmp_path / "c")],
                         OracleBackend(frames))
    assert rc != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    report = tmp_path / "c" / "metrics.json"
    if report.exists():  # partial results are only ever presented as incomplete
        assert json.loads(report.read_text())["status"] == "incomplete"
        assert "INCOMPLETE" in (tmp_path / "c" / "report.md").read_text()


def test_unknown_topic_lists_available_topics(tmp_path, monkeypatch, capsys):
    make_bag(tmp_path / "bag", "mcap", n=2, normals=False)
    rc, _, err = run_cli(monkeypatch, capsys, [str(tmp_path / "bag"), "--checkpoint", "x", "--depth-topic", "/gt"],
                         OracleBackend([]))
    _one_line_error(rc, err, "`/gt` is not in the bag", "/cam/depth (sensor_msgs/msg/Image [32FC1]", "/cam/image")


def test_ambiguous_ground_truth_asks_for_a_topic(tmp_path, monkeypatch, capsys):
    make_bag(tmp_path / "bag", "mcap", n=2, normals=False, extra_depth_topic=True)
    rc, _, err = run_cli(monkeypatch, capsys, [str(tmp_path / "bag"), "--checkpoint", "x"], OracleBackend([]))
    _one_line_error(rc, err, "/cam/depth, /cam/depth_registered", "--depth-topic")


def test_no_matching_ground_truth_is_an_error_without_a_report(tmp_path, monkeypatch, capsys):
    frames = make_bag(tmp_path / "bag", "mcap", n=3, gt_offset_ns=50_000_000, drop_gt=(), normals=False)
    rc, _, err = run_cli(monkeypatch, capsys, [str(tmp_path / "bag"), "--checkpoint", "x", "--out", str(tmp_path / "o")],
                         OracleBackend(frames))
    _one_line_error(rc, err, "no ground truth within 10 ms", "--max-dt-ms", "available:")
    assert not (tmp_path / "o" / "metrics.json").exists()
    rc, _, err = run_cli(monkeypatch, capsys, [str(tmp_path / "bag"), "--checkpoint", "x", "--out", str(tmp_path / "o"),
                                               "--max-dt-ms", "60", "--no-plots"])
    assert rc == 0, err


def test_bag_breaking_mid_way_gives_an_incomplete_report(tmp_path, monkeypatch, capsys):
    from d3_perception.evaluation.bag_source import BagError, BagSource

    frames = make_bag(tmp_path / "bag", "mcap", normals=False)
    original = BagSource.frames

    def breaking(self, idx, keep_raw=False):
        for k, f in enumerate(original(self, idx, keep_raw)):
            if k == 2:
                raise BagError("`bag` is corrupt or truncated after 2 frames: test")
            yield f

    monkeypatch.setattr(BagSource, "frames", breaking)
    rc, _, err = run_cli(monkeypatch, capsys, [str(tmp_path / "bag"), "--checkpoint", "x", "--out", str(tmp_path / "o")],
                         OracleBackend(frames))
    assert rc == 1 and "incomplete" in err
    r = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert r["status"] == "incomplete" and r["counts"]["evaluated"] == 2 and r["counts"]["matched"] == 5
    assert (tmp_path / "o" / "report.md").read_text().startswith("# d3-eval-bag report — INCOMPLETE")


def test_list_topics_and_help(tmp_path, monkeypatch, capsys):
    make_bag(tmp_path / "bag", "mcap", n=2, normals=False)
    rc, out, _ = run_cli(monkeypatch, capsys, [str(tmp_path / "bag"), "--list-topics"])
    assert rc == 0 and "/cam/depth (sensor_msgs/msg/Image [32FC1], 3 msgs)" in out
    with pytest.raises(SystemExit) as exc:
        bag_cli.main(["--help"])
    assert exc.value.code == 0
    assert "--pred-topic /d3/depth/relative" in capsys.readouterr().out


def _evaluator(cfg, frames):
    from d3_perception.evaluation.bag_eval import _Evaluator

    ev = _Evaluator(cfg, SimpleNamespace(matches=[None] * len(frames)), None)
    for frame, rel in frames:
        ev.finish(frame, rel, None, 1.0)
    return ev


@pytest.mark.parametrize("mode, space", [("per_frame", "depth"), ("per_frame", "disparity"), ("fixed", "depth")])
def test_reused_metric_buffers_give_the_values_of_a_fresh_evaluator_and_of_plain_numpy(mode, space):
    """One evaluator keeps its work buffers from frame to frame: GT with holes (gathered pixels) or without (views),
    a frame without valid GT, bad predictions, and other sizes after the first must not change any value."""
    from d3_perception.evaluation.bag_eval import BagEvalConfig
    from d3_perception.evaluation.bag_source import BagFrame
    from d3_perception.evaluation.metrics import depth_metrics_flat

    rng = np.random.default_rng(11)
    cfg = BagEvalConfig(metric_mode=mode, alignment_space=space, fixed_scale=8.0, fixed_shift=0.3, montage_frames=0)
    frames = []
    for i, (h, w) in enumerate([(48, 64), (48, 64), (30, 40), (30, 40), (200, 240)]):  # 200x240: several blocks
        gt = rng.uniform(0.5, 9.0, (h, w)).astype(np.float32)
        if i != 1:  # frame 1: every pixel valid
            gt[rng.random((h, w)) < 0.3] = np.nan
        if i == 3:
            gt[:] = np.nan  # no valid ground truth at all
        rel = ((np.nan_to_num(gt, nan=4.0) - 0.3) / 8.0 + rng.normal(0, 0.05, (h, w))).astype(np.float32)
        if mode == "fixed" and i == 2:  # missing, non-positive and infinite predictions count as clipped errors
            rel[:2], rel[2:4], rel[4, :5] = np.nan, -1.0, np.inf
        frames.append((BagFrame(index=i, stamp_ns=T0_NS + i * PERIOD_NS, log_time_ns=0, frame_id="cam", rgb=None,
                                depth_m=gt), rel))
    reused = _evaluator(cfg, frames)
    fresh = [_evaluator(cfg, [fr]) for fr in frames]
    lo, hi = cfg.min_depth_m, float(np.finfo(np.float32).max)
    for (frame, rel), rec, single in zip(frames, reused.records, fresh, strict=True):
        ref = single.records[0]
        assert (rec.status, rec.gt_valid_fraction, rec.pred_valid_fraction) == (
            ref.status, ref.gt_valid_fraction, ref.pred_valid_fraction)
        assert [rec.scale, rec.shift, rec.fit_scale, rec.fit_shift] == pytest.approx(
            [ref.scale, ref.shift, ref.fit_scale, ref.fit_shift], rel=1e-12, nan_ok=True)
        assert rec.metrics == pytest.approx(ref.metrics, rel=1e-12, nan_ok=True)
        if frame.index == 3:
            assert rec.status == "no_valid_gt" and all(math.isnan(v) for v in rec.metrics.values())
            continue
        # plain masked numpy on the whole frame: the protocol's clip of the metric depth on every GT-valid pixel
        mask = np.isfinite(frame.depth_m) & (frame.depth_m > lo)
        metric, *_ = reused.to_metric(rel, frame, (rec.fit_scale, rec.fit_shift))
        metric_v = metric[mask]
        assert rec.pred_valid_fraction == np.count_nonzero(np.isfinite(metric_v) & (metric_v > 0)) / mask.sum()
        clipped = np.clip(np.nan_to_num(metric_v, nan=lo, posinf=hi, neginf=lo), lo, hi)
        with np.errstate(over="ignore"):  # the infinite predictions are clipped to float32 max
            expected = depth_metrics_flat(clipped, frame.depth_m[mask])[0]
        assert rec.metrics == pytest.approx(expected, rel=1e-6)
    assert reused.records[2].status == "ok"
    if mode == "fixed":
        assert reused.records[2].pred_valid_fraction < 1.0 and reused.records[2].metrics["delta1"] < 0.99
    np.testing.assert_array_equal(reused.acc.error_hist, sum(f.acc.error_hist for f in fresh))
    np.testing.assert_array_equal(reused.acc.depth_count, sum(f.acc.depth_count for f in fresh))
    np.testing.assert_allclose(reused.acc.depth_sum, sum(f.acc.depth_sum for f in fresh), rtol=1e-12)
    n_scored = sum(np.count_nonzero(np.isfinite(f.depth_m) & (f.depth_m > lo)) for (f, _), r in
                   zip(frames, reused.records, strict=True) if r.status == "ok")
    assert reused.acc.error_hist.sum() == n_scored


def test_plots_with_missing_image_and_prediction(tmp_path):
    from d3_perception.evaluation.bag_eval import DEPTH_BINS_M, REL_ERROR_BINS, BagEvalConfig, FrameRecord
    from d3_perception.evaluation.plots import write_bag_plots

    gt = np.linspace(1.0, 5.0, 48 * 64, dtype=np.float32).reshape(48, 64)
    gt[:5] = np.nan
    samples = [{"index": 0, "rgb": None, "gt": gt, "rel": gt / 5.0, "pred": None, "err": np.full_like(gt, np.nan)},
               {"index": 7, "rgb": np.zeros((48, 64, 3), np.uint8), "gt": gt, "rel": gt / 5.0, "pred": gt * 1.1,
                "err": np.full_like(gt, 0.1)}]
    frames = [FrameRecord(index=i, stamp_ns=i, time_s=0.1 * i, status="ok", scale=1.0, shift=0.0, fit_scale=1.0,
                          fit_shift=0.0, gt_valid_fraction=1.0, pred_valid_fraction=1.0, model_ms=1.0,
                          record_latency_ms=math.nan, metrics={"abs_rel": 0.1, "delta1": 0.9}) for i in range(8)]
    result = SimpleNamespace(frames=frames, config=BagEvalConfig(), samples=samples,
                             error_hist=np.arange(len(REL_ERROR_BINS)),
                             depth_bins={"edges_m": DEPTH_BINS_M, "abs_rel_sum": np.ones(len(DEPTH_BINS_M) - 1),
                                         "count": np.full(len(DEPTH_BINS_M) - 1, 2)})
    names = write_bag_plots(result, tmp_path)
    assert names == ["metrics_over_time.png", "error_histogram.png", "absrel_by_depth.png", "scale_over_time.png",
                     "montage.png"]
    from PIL import Image

    with Image.open(tmp_path / "montage.png") as im:
        assert im.size[0] > 4 * 64 and im.size[1] > 2 * 48  # 4 panels per row, 2 rows


def test_float_depth_decoding_marks_non_finite_and_non_positive_values_invalid():
    from d3_perception.evaluation.bag_source import decode_depth_m

    values = np.array([[1.5, 0.0, -2.0, np.inf], [-np.inf, np.nan, 3e-3, 250.0]], np.float32)
    msg = SimpleNamespace(encoding="32FC1", height=2, width=4, step=16, is_bigendian=0, data=values.tobytes())
    depth = decode_depth_m(msg)
    assert depth.dtype == np.float32
    expected = np.array([[1.5, np.nan, np.nan, np.nan], [np.nan, np.nan, 3e-3, 250.0]], np.float32)
    np.testing.assert_array_equal(depth, expected)


def test_confidence_calibration_is_reported_with_flying_points_before_and_after_gating(tmp_path, monkeypatch,
                                                                                        capsys):
    import cv2

    frames = make_bag(tmp_path / "bag", drop_gt=(), extra_gt=False, n=3, confidence_topic=True)
    for f in frames:  # a network-like prediction: depth edges smeared across 5 px (flying pixels between surfaces)
        f["rel"] = cv2.blur(f["rel"], (5, 5))
    out = tmp_path / "out"
    rc, stdout, err = run_cli(monkeypatch, capsys, [str(tmp_path / "bag"), "--checkpoint", "x", "--out", str(out),
                                                    "--metric-mode", "fixed", "--scale", str(SCALE), "--shift",
                                                    str(SHIFT), "--min-confidence", "0.2"], OracleBackend(frames))
    assert rc == 0, err
    report = json.loads((out / "metrics.json").read_text())
    assert report["topics"]["depth"] == "/cam/depth"  # not the recorded depth/confidence
    cal = report["calibration"]
    assert cal["frames"] == 3 and cal["min_confidence"] == 0.2
    assert cal["ause"]["combined"] < 0.5 * cal["ause"]["random"]  # the smeared edges are the low-confidence ones
    fly = cal["flying_points"]
    assert fly["share_before"] > 0 and fly["share_after"] < 0.5 * fly["share_before"] and fly["kept_share"] > 0.5
    assert "confidence: AUSE" in stdout and "flying points" in stdout
    assert "## Confidence" in (out / "report.md").read_text()
