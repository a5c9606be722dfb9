"""OpenVINO export for ``d3-export --openvino``: NNCF INT8 post-training quantisation with synthetic-world
calibration frames, and the quality gate every reduced precision passes before it is kept.

The gate scores the candidate and the fp32 model (both through ``create_backend("openvino", ...)``, i.e. exactly what
the node runs) on held-out synthetic frames and refuses the candidate when AbsRel, δ1 or the mean normal
angle degrade by more than ``tolerance`` (relative). A refused INT8 model is never written to its final
place. NNCF is only needed here (``pip install 'd3_perception[openvino-int8]'``).
"""

from __future__ import annotations

import ast
import functools
import json
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FP32_MODULES", "NNCF_INSTALL_HINT", "CalibrationFrames", "QualityRejected", "export_openvino", "fp32_scope",
           "image_agreement", "quality_gate", "quantize_int8"]

logger = logging.getLogger(__name__)

NNCF_INSTALL_HINT = "pip install 'd3_perception[openvino-int8]' (or: pip install nncf)"
DEFAULT_CALIBRATION_FRAMES = 128  # on the bundled model: 1.75 % AbsRel change vs 2.11 % with 64
DEFAULT_QUALITY_FRAMES = 100
DEFAULT_QUALITY_TOLERANCE = 0.02  # relative; the INT8 budget (bf16 stays far below it)


class QualityRejected(RuntimeError):
    """A reduced-precision model degraded held-out quality by more than the tolerance; it was not kept."""


def _require_nncf():
    try:
        import nncf
    except ImportError:
        raise RuntimeError(f"INT8 export needs NNCF, which is not installed: {NNCF_INSTALL_HINT}") from None
    return nncf


def _spread(items: list, n: int, offset: float = 0.0) -> list:
    """``n`` items spread evenly over ``items`` (all of them when there are no more than ``n``): item
    ``floor((i + offset) * len / n)``; offset 0.5 takes the items between those of offset 0."""
    return list(items) if len(items) <= n else [items[int((i + offset) * len(items) / n)] for i in range(n)]


@dataclass(frozen=True)
class CalibrationFrames:
    """Where INT8 calibration frames come from: the deployment camera's own frames, as image files (``images``:
    files, folders searched recursively, globs) or the camera topic of a ROS 2 bag (``bag``, ``topic`` or the
    bag's one camera topic); neither = synthetic frames of the wide world. Frames are spread evenly over the
    recording (a recording in order: not its first second). The files, or the bag's topic and message count,
    are looked up once; only the frames asked for are decoded."""

    images: tuple[str, ...] = ()
    bag: str | None = None
    topic: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "images", tuple(str(p) for p in self.images))
        if self.images and self.bag:
            raise ValueError("`--calibration-images` and `--calibration-bag` must not be given together")
        if self.topic and not self.bag:
            raise ValueError("`--calibration-topic` must come with --calibration-bag")

    @property
    def from_camera(self) -> bool:
        return bool(self.images or self.bag)

    @functools.cached_property
    def _files(self) -> list[Path]:
        from d3_perception.image_files import collect_inputs

        files, unmatched = collect_inputs(list(self.images), recursive=True)
        if unmatched or not files:
            raise ValueError(f"`--calibration-images` must name image files or folders holding some; nothing found "
                             f"in {', '.join(unmatched or self.images)}")
        return files

    @functools.cached_property
    def _bag_topic(self) -> tuple[str, int]:
        """(the bag's camera topic, its message count)."""
        from d3_perception.evaluation.bag_source import BagSource

        with BagSource(self.bag) as source:  # BagError is a ValueError
            topic = source.camera_topic(self.topic)
            return topic, source.topics[topic][1]

    def check(self) -> None:
        """Raise ``ValueError`` (one line) now, before any slow work, if the frames cannot be found."""
        self.count()

    def count(self) -> int:
        """How many frames the recording holds (0 without camera frames)."""
        if self.bag:
            return self._bag_topic[1]
        return len(self._files) if self.images else 0

    def indices(self, num_frames: int, offset: float = 0.0) -> list[int]:
        """Positions in the recording of ``num_frames`` frames spread over it (:func:`_spread`)."""
        return _spread(list(range(self.count())), num_frames, offset)

    def rgb(self, indices: list[int]) -> list[np.ndarray]:
        """The ``[H,W,3]`` uint8 frames at these positions of the recording (decoded here, nothing else)."""
        if self.bag:
            from d3_perception.evaluation.bag_source import BagSource

            with BagSource(self.bag) as source:
                return source.camera_frames(indices, self._bag_topic[0])
        from d3_perception.image_files import read_rgb

        frames = []
        for i in indices:
            rgb = read_rgb(self._files[i])
            if rgb is None:
                raise ValueError(f"`--calibration-images`: cannot read {self._files[i]} as an image")
            frames.append(rgb)
        return frames


def image_agreement(candidate, reference, source: CalibrationFrames, calibration_frames: int,
                    max_images: int = 16) -> dict[str, Any]:
    """How far ``candidate``'s outputs move from ``reference``'s on the deployment camera's frames (no labels
    needed): depth as the mean absolute difference of the relative maps after a least-squares scale + shift fit,
    as a fraction of the map's range; normals as the mean angle between the two. Scored on up to ``max_images``
    frames between the ``calibration_frames`` calibrated on (when the recording has that many more), else on
    calibration frames."""
    from d3_perception.evaluation.metrics import normal_angles_deg
    from d3_perception.geometry.alignment import fit_scale_shift

    count = source.count()
    unseen = count >= 2 * calibration_frames  # frames between the calibration ones exist
    pool = source.indices(calibration_frames, offset=0.5) if unseen else list(range(count))
    frames = source.rgb(_spread(pool, min(max_images, len(pool))))
    depth_mae, normals_deg = [], []
    for rgb in frames:
        a, b = candidate.predict(rgb[None]), reference.predict(rgb[None])
        if "depth" in a and "depth" in b:
            x, y = a["depth"][0].astype(np.float64), b["depth"][0].astype(np.float64)
            ok = np.isfinite(x) & np.isfinite(y)
            try:
                scale, shift, _ = fit_scale_shift(x, y, ok)
            except ValueError:  # a constant map: compare as it is
                scale, shift = 1.0, 0.0
            spread = float(np.ptp(y[ok])) or 1.0
            depth_mae.append(float(np.mean(np.abs(scale * x[ok] + shift - y[ok]))) / spread)
        if "normals" in a and "normals" in b:  # [3,H,W] -> [H,W,3]
            angles = normal_angles_deg(np.moveaxis(a["normals"][0], 0, -1), np.moveaxis(b["normals"][0], 0, -1))
            normals_deg.append(float(angles.mean()))
    report: dict[str, Any] = {"images": len(frames), "calibration_images_among_them": not unseen}
    if depth_mae:
        report["depth_mean_abs_diff_of_range"] = float(np.mean(depth_mae))
    if normals_deg:
        report["normals_mean_angle_deg"] = float(np.mean(normals_deg))
    return report


def calibration_inputs(config, num_frames: int, seed: int | None = None, resolution: int | None = None,
                       source: CalibrationFrames | None = None) -> list[np.ndarray]:
    """Network inputs ``[1,3,h,w]`` float32 (the backends' own pre-processing) with the long side at
    ``resolution`` (None = the processing resolution): of the deployment camera's frames (``source``; they
    calibrate a real-image model far better than synthetic ones), else of synthetic world frames disjoint from
    the held-out ones, rendered at 3:4."""
    from d3_perception.model.processing import preprocess

    res = resolution or config.processing_resolution
    if source is not None and source.from_camera:
        return [preprocess(rgb[None], res, config.input_range)[0] for rgb in source.rgb(source.indices(num_frames))]
    from d3_perception.evaluation.heldout import CALIBRATION_SEED, synthetic_frames

    hw = (max(8, res * 3 // 4), res)
    frames = synthetic_frames(num_frames, hw, CALIBRATION_SEED if seed is None else seed)
    return [preprocess(f.rgb[None], res, config.input_range)[0] for f in frames]


# modules NNCF leaves in fp32: the first and last convolution of each network (VAE encoder in, UNet in and out,
# VAE decoder in and out) and the latent 1x1 projections around the UNet (8 of the tiny model's 74 convolutions).
# With them quantised the bundled model lost 5.1 % AbsRel on 200 frames of its own world; kept fp32 (and 128
# calibration frames), 1.75 % (docs/model.md)
FP32_MODULES = ("conv_in", "conv_out", "quant_conv", "post_quant_conv")


def _conv_module(node) -> str:
    """The torch module path of an ONNX Conv node: from the dynamo exporter's name scopes, else from the legacy
    exporter's node name (``/predictor/unet/conv_in/Conv``)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = ast.literal_eval(prop.value)
            return scopes[-2] if len(scopes) >= 2 else ""
    return ".".join(part for part in node.name.split("/")[:-1] if part)


def fp32_scope(onnx_path: str | os.PathLike) -> list[str]:
    """Names of the ONNX Conv nodes of ``onnx_path`` that stay fp32 in the INT8 model (:data:`FP32_MODULES`)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return [n.name for n in graph.node
            if n.op_type == "Conv" and _conv_module(n).rsplit(".", 1)[-1] in FP32_MODULES]


def quantize_int8(onnx_path: str | os.PathLike, out_path: str | os.PathLike, *,
                  calibration_frames: int = DEFAULT_CALIBRATION_FRAMES, seed: int | None = None,
                  calibration_resolution: int | None = None,
                  calibration: CalibrationFrames | None = None) -> Path:
    """NNCF post-training INT8 quantisation of an fp32 ONNX export -> OpenVINO IR ``out_path`` (.xml + .bin),
    written atomically, carrying the d3 config, checkpoint hash and tasks in its ``rt_info``.

    ``calibration``: the deployment camera's frames to calibrate on (:class:`CalibrationFrames`; up to
    ``calibration_frames`` of them) instead of synthetic frames.
    ``calibration_resolution``: long side of the calibration frames (None = the processing resolution). The
    quantisation parameters do not depend on the input size (the export has dynamic height and width), and
    NNCF's statistics memory grows with it: an SD2.1-size model at 768 px needs more than 20 GiB.
    """
    nncf = _require_nncf()
    import openvino as ov

    from d3_perception.backends.onnx_io import _quiet_stdout, config_from_onnx, read_onnx_metadata
    from d3_perception.model.config import check_processing_resolution

    if isinstance(calibration_frames, bool) or not isinstance(calibration_frames, int) or calibration_frames < 1:
        raise ValueError(f"`calibration_frames` must be an integer >= 1; got {calibration_frames!r}")
    if calibration_resolution is not None:
        check_processing_resolution(calibration_resolution, "calibration_resolution")
    out_path = Path(out_path)
    if out_path.suffix != ".xml":
        raise ValueError(f"`out_path` must end in .xml (OpenVINO IR); got {str(out_path)!r}")
    config = config_from_onnx(onnx_path)
    meta = read_onnx_metadata(onnx_path)
    model = ov.Core().read_model(str(onnx_path))
    inputs = calibration_inputs(config, calibration_frames, seed, calibration_resolution, calibration)
    logger.info("NNCF INT8 quantisation of %s on %d %s calibration frames", onnx_path, len(inputs),
                "camera" if calibration is not None and calibration.from_camera else "synthetic")
    # OpenVINO names a Conv's convolution "<onnx name>/WithoutBiases" and its bias add "<onnx name>"
    keep = [f"{re.escape(name)}(/WithoutBiases)?$" for name in fp32_scope(onnx_path)]  # NNCF: re.match
    # MIXED: symmetric weights, asymmetric activations (SiLU/GroupNorm outputs are far from zero-centred).
    with _quiet_stdout():  # NNCF draws progress bars on stdout, where d3-export prints its JSON summary
        quantized = nncf.quantize(model, nncf.Dataset(inputs), preset=nncf.QuantizationPreset.MIXED,
                                  subset_size=len(inputs),
                                  ignored_scope=nncf.IgnoredScope(patterns=keep, validate=False) if keep else None)
    quantized.set_rt_info(json.dumps(config.to_dict()), ["d3", "config"])
    quantized.set_rt_info(meta.get("d3_checkpoint_hash", ""), ["d3", "checkpoint_hash"])
    quantized.set_rt_info(",".join(config.tasks), ["d3", "tasks"])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".ov-int8-", dir=out_path.parent))
    try:
        ov.save_model(quantized, str(tmp_dir / out_path.name), compress_to_fp16=False)
        # .bin first, .xml last: a reader that finds the .xml finds its weights
        os.replace(tmp_dir / out_path.with_suffix(".bin").name, out_path.with_suffix(".bin"))
        os.replace(tmp_dir / out_path.name, out_path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_path


def quality_gate(candidate, reference, *, num_frames: int = DEFAULT_QUALITY_FRAMES,
                 tolerance: float = DEFAULT_QUALITY_TOLERANCE, hw: tuple[int, int] | None = None) -> dict[str, Any]:
    """Held-out quality of two backends and the relative change; raises :class:`QualityRejected` when a
    metric degrades by more than ``tolerance``. ``hw``: frame size (default square at the processing
    resolution: 64x64 for the bundled model, as in its quality.json)."""
    from d3_perception.evaluation.heldout import heldout_quality, quality_change

    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"`tolerance` must be a finite number >= 0; got {tolerance!r}")
    res = reference.info.processing_resolution
    hw = hw or (res, res)
    ref_q = heldout_quality(reference, num_frames, hw)
    cand_q = heldout_quality(candidate, num_frames, hw)
    change = quality_change(cand_q, ref_q)
    worst_key = max(change, key=change.get) if change else None
    report = {"frames": num_frames, "frame_hw": list(hw), "reference": ref_q, "candidate": cand_q,
              "relative_degradation": change, "tolerance": tolerance,
              "passed": worst_key is None or change[worst_key] <= tolerance}
    if not report["passed"]:
        raise QualityRejected(f"{candidate.info.precision} model refused: {worst_key} degrades by "
                              f"{100 * change[worst_key]:.2f} % on {num_frames} held-out frames (tolerance "
                              f"{100 * tolerance:.2f} %)")
    return report


def export_openvino(checkpoint: str | os.PathLike, onnx_path: str | os.PathLike, *, precision: str = "fp32",
                    cache_dir: str | os.PathLike | None = None, calibration_frames: int = DEFAULT_CALIBRATION_FRAMES,
                    quality_frames: int = DEFAULT_QUALITY_FRAMES, tolerance: float = DEFAULT_QUALITY_TOLERANCE,
                    num_threads: int | None = None, calibration_resolution: int | None = None,
                    calibration: CalibrationFrames | None = None) -> dict[str, Any]:
    """``d3-export --openvino``: compile (and cache) the model at ``precision``; for int8 first quantise it
    (on the camera frames of ``calibration`` when given, else synthetic frames).

    bf16 / int8 pass :func:`quality_gate` against fp32 before they are kept; a refused INT8 IR is deleted.
    Returns a JSON-ready summary (model file, compiled-model cache status, quality report; with camera
    frames also ``agreement_on_images``, :func:`image_agreement`).
    """
    from d3_perception.backends import create_backend
    from d3_perception.backends.onnx_io import config_from_onnx, default_cache_dir, read_onnx_metadata
    from d3_perception.backends.openvino_backend import int8_model_path

    if precision not in ("fp32", "bf16", "int8"):
        raise ValueError(f"`precision` must be fp32, bf16 or int8 for --openvino; got {precision!r}")
    if precision == "int8":
        _require_nncf()  # fail before any work
        camera = calibration is not None and calibration.from_camera
        if camera:
            calibration.check()  # found (or refused) before any work
    checkpoint, onnx_path = Path(checkpoint), Path(onnx_path)
    cache_base = Path(cache_dir) if cache_dir is not None else (
        default_cache_dir(checkpoint) if checkpoint.is_dir() else onnx_path.parent)
    common = dict(cache_dir=cache_base, num_threads=num_threads)
    summary: dict[str, Any] = {"precision": precision}
    if precision == "fp32":
        backend = create_backend("openvino", checkpoint, onnx_path=onnx_path, precision="fp32", **common)
        summary.update(model=str(backend.model_path), cache=_status(backend))
        return summary
    reference = create_backend("openvino", checkpoint, onnx_path=onnx_path, precision="fp32", **common)
    if precision == "bf16":
        candidate = create_backend("openvino", checkpoint, onnx_path=onnx_path, precision="bf16", **common)
        summary.update(model=str(candidate.model_path), cache=_status(candidate))
        summary["quality"] = quality_gate(candidate, reference, num_frames=quality_frames, tolerance=tolerance)
        return summary
    final = int8_model_path(cache_base, read_onnx_metadata(onnx_path).get("d3_checkpoint_hash", ""),
                            config_from_onnx(onnx_path).tasks)
    staging = Path(tempfile.mkdtemp(prefix=".ov-int8-candidate-", dir=cache_base))
    try:
        candidate_path = quantize_int8(onnx_path, staging / final.name, calibration_frames=calibration_frames,
                                       calibration_resolution=calibration_resolution, calibration=calibration)
        candidate = create_backend("openvino", candidate_path, precision="int8", cache_dir=staging, num_threads=num_threads)
        summary["quality"] = quality_gate(candidate, reference, num_frames=quality_frames, tolerance=tolerance)
        if camera:  # the labelled gate above is synthetic: also say how far INT8 moves on the camera's frames
            summary["agreement_on_images"] = image_agreement(candidate, reference, calibration, calibration_frames)
        candidate.close()
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(candidate_path.with_suffix(".bin"), final.with_suffix(".bin"))
        os.replace(candidate_path, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    backend = create_backend("openvino", checkpoint, onnx_path=onnx_path, precision="int8", **common)  # compiled + cached
    summary.update(model=str(final),
                   calibration_frames=min(calibration_frames, calibration.count()) if camera else calibration_frames,
                   calibration_source=("bag" if calibration.bag else "images") if camera else "synthetic",
                   calibration_resolution=calibration_resolution or reference.config.processing_resolution,
                   cache=_status(backend))
    return summary


def _status(backend) -> dict[str, str]:
    return {"x".join(str(v) for v in shape): status for shape, status in backend.cache_status.items()}
