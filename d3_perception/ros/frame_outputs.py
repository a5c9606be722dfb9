"""The node's per-frame work after the model, without ROS entities: model output -> metric depth, colour map,
optical-frame normals (+ their images) and the organized cloud, computed straight into the message buffers of
a :class:`~d3_perception.ros.conversions.BufferPool` and shared with helper threads.

``D3PerceptionNode._process`` and ``bench/node_overhead.py`` (P4) both call :func:`compute_outputs`, so the
benchmark times the node's own code path.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from d3_perception.geometry.alignment import AlignmentResult, MetricAligner
from d3_perception.geometry.intrinsics import intrinsics_from_fov
from d3_perception.geometry.normals import interleave, normals_from_depth, to_optical_frame_planes
from d3_perception.geometry.pointcloud import cloud_dtype, fill_cloud
from d3_perception.parallel import RowWorkers, scratch
from d3_perception.ros import conversions as conv
from d3_perception.ros.frame_quality import FrameQuality, QualitySample
from d3_perception.ros.params import NodeConfig

__all__ = ["FrameOutputs", "SideOutputs", "colorize", "compute_outputs", "needs_normals", "normals_vis",
           "output_messages", "range_depth"]

FALLBACK_HFOV_DEG = 60.0  # normals_source=depth without camera_info: assumed field of view
# OpenCV tables of the `colormap` parameter's choices (params.COLORMAPS; "gray" needs none)
_CV2_COLORMAPS = {"turbo": cv2.COLORMAP_TURBO, "inferno": cv2.COLORMAP_INFERNO, "viridis": cv2.COLORMAP_VIRIDIS,
                  "jet": cv2.COLORMAP_JET, "magma": cv2.COLORMAP_MAGMA, "plasma": cv2.COLORMAP_PLASMA}


@functools.lru_cache(maxsize=len(_CV2_COLORMAPS))
def _colormap_lut(colormap: str) -> np.ndarray:
    """An OpenCV colour map as one ``[1,256]`` int32 table whose 4 bytes are B, G, R, 0 (any byte order)."""
    bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(1, 256), _CV2_COLORMAPS[colormap])[0]  # [256,3]
    bgrx = np.zeros((256, 4), np.uint8)
    bgrx[:, :3] = bgr
    return bgrx.view(np.int32).reshape(1, 256)


def colorize(relative: np.ndarray, colormap: str, out: np.ndarray | None = None) -> np.ndarray:
    """``[H,W]`` relative depth -> ``[H,W,3]`` uint8 BGR; near = warm (turbo red), NaN = black.

    ``out``: optional C-contiguous ``[H,W,3]`` uint8 to write into.
    """
    rel = np.asarray(relative, dtype=np.float32)
    near = np.subtract(np.float32(1.0), rel, out=scratch.get("colorize.near", rel.shape))
    np.clip(near, 0.0, 1.0, out=near)  # NaN stays NaN: those pixels are blacked below
    near *= np.float32(255.0)
    u8 = scratch.get("colorize.u8", rel.shape, np.uint8)
    with np.errstate(invalid="ignore"):
        np.copyto(u8, near, casting="unsafe")  # truncation, as astype
    if colormap == "gray":
        vis = cv2.cvtColor(u8, cv2.COLOR_GRAY2BGR, dst=out)
    else:  # = cv2.applyColorMap: one lookup of 4-byte BGR0 entries, then BGRA -> BGR (one SIMD pass); its
        # 3-channel table lookup, or three 1-channel ones + merge, cost 2-4x more
        bgrx = cv2.LUT(u8, _colormap_lut(colormap), dst=scratch.get("colorize.bgrx", rel.shape, np.int32))
        vis = cv2.cvtColor(bgrx.view(np.uint8).reshape(*rel.shape, 4), cv2.COLOR_BGRA2BGR, dst=out)
    finite = np.isfinite(rel)
    if not finite.all():
        vis[~finite] = 0
    return vis


def normals_vis(normals, out: np.ndarray | None = None) -> np.ndarray:
    """Three ``[H,W]`` normal planes -> ``[H,W,3]`` uint8 ``(n+1)/2*255`` (NaN = 0) for viewing."""
    planes = []
    t = scratch.get("normals_vis.t", normals[0].shape)
    for i, n in enumerate(normals):
        np.add(n, np.float32(1.0), out=t)
        t *= np.float32(127.5)
        np.nan_to_num(t, copy=False, nan=0.0)
        np.clip(t, 0, 255, out=t)
        u8 = scratch.get(f"normals_vis.u8{i}", t.shape, np.uint8)
        np.copyto(u8, t, casting="unsafe")
        planes.append(u8)
    return cv2.merge(planes, dst=out)


class SideOutputs:
    """The images of one frame that need only the model output, computed into the message buffers of
    ``pool`` (views taken here, in the worker thread that owns the pool; the methods may run on a helper
    thread). ``images``: output name -> finished image."""

    def __init__(self, pool: conv.BufferPool, want: dict[str, bool], hw: tuple[int, int], relative, colormap: str,
                 planes: bool):
        self.images: dict[str, np.ndarray] = {}
        self._relative, self._colormap = relative, colormap
        self._colored = pool.view("colored", (*hw, 3), np.uint8)[1] if want["colored"] else None
        self._planes = pool.view("normals.planes", (3, *hw), np.float32)[1] if planes else None
        self._normals_img = pool.view("normals", (*hw, 3), np.float32)[1] if want["normals"] else None
        self._normals_vis = pool.view("normals_colored", (*hw, 3), np.uint8)[1] if want["normals_colored"] else None

    def colored(self) -> None:
        self.images["colored"] = colorize(self._relative, self._colormap, out=self._colored)

    def normals(self, model_normals, convention: str, K, workers: RowWorkers | None = None, images: bool = True,
                normalise: bool = False):
        """Model normals -> three optical-frame planes (+ their images unless ``images`` is False).
        ``normalise``: renormalise (a plugin backend that does not promise ``unit_normals``)."""
        planes = to_optical_frame_planes(model_normals, convention, K, out=self._planes, workers=workers,
                                         normalise=normalise)
        if images:
            self.normals_images(planes)
        return planes

    def normals_images(self, planes) -> None:
        if self._normals_img is not None:
            self.images["normals"] = interleave(planes, out=self._normals_img)
        if self._normals_vis is not None:
            self.images["normals_colored"] = normals_vis(planes, self._normals_vis)


def needs_normals(want: dict[str, bool], cfg: NodeConfig) -> bool:
    """Whether any wanted output uses normals (the normals images, or the cloud's normal fields)."""
    return want["normals"] or want["normals_colored"] or (want["points"] and cfg.cloud_normals)


def range_depth(relative: np.ndarray, cfg: NodeConfig) -> np.ndarray:
    """Relative depth spread over [near_m, far_m]: the geometry used when no metric depth is known."""
    return relative * np.float32(cfg.metric.far_m - cfg.metric.near_m) + np.float32(cfg.metric.near_m)


def fill_points(cfg: NodeConfig, pool: conv.BufferPool, rgb, geo_depth, normals, K, out_hw,
                workers: RowWorkers | None, confidence: np.ndarray | None = None):
    """The organized cloud of ``geo_depth`` (``[H,W]`` metres, NaN = no point), filled into the ``points``
    message buffer: (cloud, buffer, is_dense). ``confidence``: ``[H,W]`` map for the ``confidence`` field."""
    with_normals = cfg.cloud_normals and normals is not None
    dtype = cloud_dtype(cfg.cloud_rgb, with_normals, confidence=confidence is not None)
    s = cfg.cloud_stride
    shape = (-(-out_hw[0] // s), -(-out_hw[1] // s), dtype.itemsize // 4)
    buf, block = pool.float32_block("points", shape)
    # fill_cloud writes its own layout; with normals the confidence takes its padding slot (offset 28), without
    # them the 16-byte points are filled aside and widened to 32 bytes (one copy, only with this option)
    inner = block if confidence is None or with_normals else scratch.get("points.inner", (*shape[:2], 4))
    _, dense = fill_cloud(geo_depth, K, rgb if cfg.cloud_rgb else None, normals if with_normals else None,
                          stride=s, min_range_m=cfg.cloud_min_range_m, max_range_m=cfg.cloud_max_range_m,
                          out=inner, workers=workers)
    if confidence is not None:
        if inner is not block:
            block[..., :4] = inner
            block[..., 5:] = 0.0  # padding: never ship uninitialised memory
        block[..., dtype.fields["confidence"][1] // 4] = confidence[::s, ::s]
    return block.view(dtype).reshape(shape[:2]), buf, dense


@dataclass
class FrameOutputs:
    """What :func:`compute_outputs` made; arrays are views into the pool's message buffers."""

    images: dict[str, np.ndarray]  # "colored", "normals", "normals_colored" when wanted
    depth_m: np.ndarray | None  # metric depth [H,W], None without a metric alignment (gated: NaN below
    # min_confidence)
    align: AlignmentResult
    cloud: tuple | None  # (points, message buffer, is_dense), None when not wanted or without K
    confidence: np.ndarray | None = None  # [H,W] float32 in [0,1], None unless published (message or cloud field)
    quality: QualitySample = QualitySample()


_NO_ALIGNMENT = AlignmentResult(math.nan, math.nan, math.nan, 0, "off")


def compute_outputs(cfg: NodeConfig, want: dict[str, bool], rgb: np.ndarray, relative: np.ndarray | None,
                    model_normals: np.ndarray | None, K: np.ndarray | None, out_hw: tuple[int, int],
                    pool: conv.BufferPool, workers: RowWorkers, align: Callable[[np.ndarray], AlignmentResult], *,
                    convention: str, renormalise: bool, mark: Callable[[], None] | None = None,
                    quality: FrameQuality | None = None) -> FrameOutputs:
    """Everything the node publishes after the model, for one frame.

    relative: ``[H,W]`` model depth in [0,1] (None for a normals-only checkpoint); model_normals: ``[3,H,W]``
    in ``convention`` (None: normals from depth when wanted); align: ``relative`` -> its metric alignment,
    called on this thread (the node: sparse reference lookup + its aligner); renormalise: the backend does
    not promise unit normals. mark: called at the end of the stages side_jobs, metric_fit, side_wait,
    confidence and cloud (the benchmark's stage timer). quality: the camera's :class:`FrameQuality`
    (stabiliser, confidence, gating by ``min_confidence``); None = none of these (the outputs as before #16).
    """
    tick = mark or (lambda: None)
    fit = relative is not None and cfg.metric.mode == "sparse_depth"
    # The helper threads start on the work that needs only the model output (model normals and their
    # images, the colour map) while this thread fits the metric scale; then all share the cloud rows.
    side = SideOutputs(pool, want, out_hw, relative, cfg.colormap, planes=model_normals is not None)
    with workers.batch() as submit:  # on any exit every job is finished or cancelled: buffers are free
        normals_job = None
        if model_normals is not None and fit:
            normals_job = submit(functools.partial(side.normals, model_normals, convention, K,
                                                   normalise=renormalise))
        # with a fit, the helper has the normals and this thread takes the colour map after its (shorter)
        # fit, so that both are free for the cloud rows at about the same time
        colored_here = want["colored"] and normals_job is not None
        colored_job = submit(side.colored) if want["colored"] and not colored_here else None
        tick()  # side_jobs
        alignment = align(relative) if relative is not None else _NO_ALIGNMENT
        depth_m = None
        if alignment.is_metric and relative is not None:
            depth_m = MetricAligner.apply(relative, alignment, out=pool.view("depth", out_hw, np.float32)[1])
            if quality is not None and cfg.temporal.blend > 0:
                quality.stabilise(depth_m, rgb, cfg)  # blends in place: before the confidence, which rates it
        if colored_here:
            side.colored()
        tick()  # metric_fit

        normals = None  # three [H,W] planes nx, ny, nz (optical frame, unit, facing the camera)
        cue_normals = None  # the model's normals: the confidence compares them with the depth's
        images_job = None  # normals images, when not made with the model normals above
        if normals_job is not None:
            normals = cue_normals = workers.result(normals_job)
        elif model_normals is not None:  # no fit to overlap with: all threads share the rows
            normals = cue_normals = side.normals(model_normals, convention, K, workers=workers, images=False,
                                                 normalise=renormalise)
            images_job = submit(functools.partial(side.normals_images, normals))
        elif needs_normals(want, cfg) and relative is not None:
            geo_depth = depth_m if depth_m is not None else range_depth(relative, cfg)
            n = normals_from_depth(geo_depth, K if K is not None else intrinsics_from_fov(out_hw, FALLBACK_HFOV_DEG))
            normals = (n[:, :, 0], n[:, :, 1], n[:, :, 2])
            images_job = submit(functools.partial(side.normals_images, normals))  # from the depth: no cue
        tick()  # side_wait

        cloud_wanted = want["points"] and K is not None and relative is not None
        geo_depth = depth_m  # the cloud's geometry: metric depth, else the depth_range proxy
        if relative is not None and geo_depth is None and (cloud_wanted or quality is not None):
            geo_depth = range_depth(relative, cfg)
        confidence, sample = None, QualitySample()
        if quality is not None and relative is not None:
            buf = pool.view("confidence", out_hw, np.float32)[1] if want.get("confidence") else None
            quality.confidence(geo_depth, K, cue_normals, out=buf)
            if depth_m is not None and cfg.temporal.blend <= 0:
                # the flicker estimate alone changes no depth, so it runs here, before the gate: not beside the
                # helpers' normals work (which slowed it 2x), and after the confidence grid read its depth rows
                quality.stabilise(depth_m, rgb, cfg)
            if depth_m is not None or cloud_wanted:  # the proxy alone feeds nothing else: not gated
                quality.gate(geo_depth, cfg.min_confidence)  # depth_m (the depth message) or the cloud's proxy
            if want.get("confidence") or (cloud_wanted and cfg.cloud_confidence):
                confidence = quality.confidence_map()
            sample = quality.finish(cfg, alignment, depth_m)
        tick()  # confidence

        cloud = None
        if cloud_wanted:
            cloud = fill_points(cfg, pool, rgb, geo_depth, normals, K, out_hw, workers,
                                confidence if cfg.cloud_confidence and confidence is not None else None)
        if colored_job is not None:
            workers.result(colored_job)
        if images_job is not None:
            workers.result(images_job)
        tick()  # cloud
    return FrameOutputs(side.images, depth_m, alignment, cloud, confidence, sample)


def output_messages(want: dict[str, bool], outputs: FrameOutputs, relative: np.ndarray | None, K, out_hw, header,
                    pool: conv.BufferPool, camera_info=None) -> dict:
    """Output name -> message, in publishing order. Image and cloud messages wrap the pool's buffers (no copy:
    rclpy serializes inside ``publish()``, so the buffers can be reused by the next frame)."""
    msgs = {}
    if want["relative"] and relative is not None:
        msgs["relative"] = conv.numpy_to_msg(relative, "32FC1", header, pool, "relative")
    if want["depth"] and outputs.depth_m is not None:
        msgs["depth"] = conv.numpy_to_msg(outputs.depth_m, "32FC1", header, pool, "depth")
    if want.get("confidence") and outputs.confidence is not None:
        msgs["confidence"] = conv.numpy_to_msg(outputs.confidence, "32FC1", header, pool, "confidence")
    if want["camera_info"] and K is not None:
        msgs["camera_info"] = conv.scaled_camera_info(camera_info, K, out_hw, header)
    for name, encoding in (("colored", "bgr8"), ("normals", "32FC3"), ("normals_colored", "rgb8")):
        if name in outputs.images:
            msgs[name] = conv.numpy_to_msg(outputs.images[name], encoding, header, pool, name)
    if outputs.cloud is not None:
        points, buf, dense = outputs.cloud
        msgs["points"] = conv.cloud_to_msg(points, header, buf, is_dense=dense)
    return msgs
