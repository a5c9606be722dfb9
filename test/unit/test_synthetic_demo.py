"""d3-demo pieces that need no ROS: metrics against ground truth, montage, PLY, launch specs, camera config."""

from __future__ import annotations

import re

import numpy as np
import pytest

from d3_perception.evaluation.demo_outputs import DemoAccumulator, montage, write_ply
from d3_perception.synthetic import SyntheticSequence
from d3_perception.synthetic.camera_config import CAMERA_PARAMETERS, SyntheticCameraConfig

HW = (36, 48)


@pytest.fixture(scope="module")
def frame():
    return SyntheticSequence(1, HW, 10.0, "room").frame(2)


def test_perfect_prediction_scores_perfectly(frame):
    gt = frame.depth_m
    relative = (gt - np.nanmin(gt)) / (np.nanmax(gt) - np.nanmin(gt))  # affine-invariant, 0 = near
    acc = DemoAccumulator()
    res = acc.add(1, frame.rgb, gt, frame.normals, frame.K, relative.astype(np.float32), frame.normals,
                  pred_metric_m=gt * 1.1, latency_ms=50.0)
    acc.add(2, frame.rgb, gt, frame.normals, frame.K, relative.astype(np.float32), -frame.normals, latency_ms=150.0)
    assert res.metrics["abs_rel"] < 1e-4 and res.metrics["delta1"] == 1.0
    assert res.metrics["normal_mean_deg"] < 0.1
    assert res.metrics["metric_abs_rel"] == pytest.approx(0.1, rel=1e-3)
    s = acc.summary()
    assert s["frames_evaluated"] == 2
    assert s["normal_mean_deg"] == pytest.approx(90.0, abs=0.1)  # mean of 0 and 180 degrees
    assert s["latency_p50_ms"] == pytest.approx(100.0) and s["latency_p95_ms"] == pytest.approx(145.0)


def test_noise_prediction_scores_badly(frame):
    rng = np.random.default_rng(0)
    acc = DemoAccumulator()
    res = acc.add(1, frame.rgb, frame.depth_m, frame.normals, frame.K, rng.random(HW).astype(np.float32),
                  rng.normal(size=(*HW, 3)).astype(np.float32))
    assert res.metrics["abs_rel"] > 0.1 and res.metrics["normal_mean_deg"] > 45


def test_prediction_at_another_resolution_is_compared_at_its_own(frame):
    small = np.full((18, 24), 0.5, np.float32)
    small[:9] = 0.2  # non-constant
    res = DemoAccumulator().add(1, frame.rgb, frame.depth_m, frame.normals, frame.K, small)
    assert res.gt_depth_m.shape == (18, 24) and res.rgb.shape == (18, 24, 3)
    assert res.K[0, 0] == pytest.approx(frame.K[0, 0] / 2)


def test_montage_layout_and_ply(frame, tmp_path):
    gt = frame.depth_m
    res = DemoAccumulator().add(1, frame.rgb, gt, frame.normals, frame.K, (gt / np.nanmax(gt)).astype(np.float32),
                                frame.normals)
    img = montage(res)
    assert img.shape == (HW[0], 6 * HW[1], 3) and img.dtype == np.uint8
    # panel 3 (GT depth) equals panel 2 (aligned prediction) for a perfect prediction, outside the label
    p2, p3 = img[20:, HW[1]:2 * HW[1]], img[20:, 2 * HW[1]:3 * HW[1]]
    assert np.abs(p2.astype(int) - p3.astype(int)).max() <= 3
    from d3_perception.geometry.pointcloud import backproject

    n = write_ply(tmp_path / "c.ply", backproject(gt, frame.K), frame.rgb, frame.normals)
    header = (tmp_path / "c.ply").read_bytes()[:400].decode("ascii", errors="replace")
    assert n == HW[0] * HW[1] and int(re.search(r"element vertex (\d+)", header).group(1)) == n


def test_camera_config_validates_every_parameter():
    cfg = SyntheticCameraConfig()
    assert {p.name for p in CAMERA_PARAMETERS} == set(cfg.__dataclass_fields__)
    assert cfg.with_values({"sparse_dropout": 0.5}).sparse_dropout == 0.5
    assert SyntheticCameraConfig.from_values({"rate_hz": 5}).rate_hz == 5.0  # YAML ints are fine for floats
    for bad, match in (({"scene": "cave"}, "`scene` must be one of"), ({"width": 2}, "`width` must be in"),
                       ({"sparse_dropout": 2.0}, "`sparse_dropout`"), ({"frame_id": " "}, "`frame_id`"),
                       ({"publish_depth": 1}, "`publish_depth` must be bool"), ({"colour": 1}, "unknown")):
        with pytest.raises(ValueError, match=match):
            cfg.with_values(bad)


def test_yaml_defaults_match_the_declared_parameters():
    import yaml

    from d3_perception.ros.launch_config import package_share_dir

    data = yaml.safe_load((package_share_dir() / "config" / "synthetic_camera.yaml").read_text())
    values = data["/**/synthetic_camera"]["ros__parameters"]
    assert values == {p.name: p.default for p in CAMERA_PARAMETERS}


def test_demo_specs_wire_camera_ground_truth_to_the_node():
    from d3_perception.ros.demo import DEMO_LAUNCH_ARGUMENTS, demo_specs

    camera, node = demo_specs("", "torch", "outdoor", "3", "64", "48", "2.5", "sparse_depth")
    assert camera.namespace == "/camera" and node.namespace == "/d3"
    assert {"width": 64, "height": 48, "scene": "outdoor", "seed": 3, "rate_hz": 2.5}.items() <= camera.params.items()
    assert dict(node.remaps) == {"image": "/camera/image", "image/compressed": "/camera/image/compressed",
                                 "camera_info": "/camera/camera_info", "sparse_depth": "/camera/sparse_depth"}
    assert node.cmd[-2:] == ["-r", "sparse_depth:=/camera/sparse_depth"]
    assert node.params["metric.mode"] == "sparse_depth"
    assert {a.name for a in DEMO_LAUNCH_ARGUMENTS} >= {"namespace", "checkpoint", "backend", "scene", "rviz"}
    camera, node = demo_specs(namespace="launch_test")
    assert (camera.namespace, node.namespace) == ("/launch_test/camera", "/launch_test")
    assert dict(node.remaps)["sparse_depth"] == "/launch_test/camera/sparse_depth"
    with pytest.raises(ValueError, match="`namespace`"):
        demo_specs(namespace="9lives")
    with pytest.raises(ValueError, match="`width`"):
        demo_specs(width=2)
    with pytest.raises(ValueError, match="`metric_mode`"):
        demo_specs(metric_mode="exact")


def test_demo_renders_every_scene_kind_of_the_world_including_the_held_out_family():
    from d3_perception.ros.demo import build_parser, demo_specs
    from d3_perception.synthetic.scene import SCENE_KINDS

    assert {"world", "shift"} <= set(SCENE_KINDS)
    for kind in SCENE_KINDS:
        assert build_parser().parse_args(["--scene", kind]).scene == kind
        camera, _node = demo_specs(scene=kind, base_env={})
        assert camera.params["scene"] == kind
