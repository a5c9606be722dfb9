"""The metric reference of ``metric.mode: sparse_depth``: recent ``sparse_depth`` messages, matched to a frame by
stamp, decoded to metres (one depth -> metres conversion: :func:`d3_perception.image_codec.decode_depth_m`)
and moved onto the output image's pixel grid. No rclpy: messages are duck-typed (``header.stamp``, the Image
fields), so the pipeline tests and the bag tools can use it too.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

from d3_perception.image_codec import ImageDecodeError, decode_depth_m

__all__ = ["SPARSE_BUFFER_LEN", "SparseReference", "rescale_sparse", "stamp_s"]

SPARSE_BUFFER_LEN = 16  # sparse_depth messages kept for stamp matching (~0.5 s at 30 Hz)
ASPECT_TOLERANCE = 0.01  # a reference of another size is used when its aspect ratio differs less than this


def stamp_s(stamp) -> float:
    """A ``builtin_interfaces/Time`` (or anything with ``sec`` and ``nanosec``) in seconds."""
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


def rescale_sparse(sparse: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Move each valid reference pixel of ``sparse`` ``[h,w]`` metres to its place in an ``hw`` image (no
    interpolation of sparse data); ``[H,W]`` float32, NaN elsewhere."""
    out = np.full(hw, np.nan, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        v, u = np.nonzero(np.isfinite(sparse) & (sparse > 0))
    if v.size:
        sy, sx = hw[0] / sparse.shape[0], hw[1] / sparse.shape[1]
        vv = np.minimum(((v + 0.5) * sy).astype(np.int64), hw[0] - 1)
        uu = np.minimum(((u + 0.5) * sx).astype(np.int64), hw[1] - 1)
        out[vv, uu] = sparse[v, u]
    return out


@dataclass(frozen=True)
class Problem:
    """Why no reference could be used: a bad-input kind of :data:`~d3_perception.ros.pipeline_stats.BAD_INPUT_KINDS`
    and a one-line reason."""

    kind: str
    reason: str


class SparseReference:
    """Recent reference messages (appended by the subscription thread, read by the worker)."""

    def __init__(self, maxlen: int = SPARSE_BUFFER_LEN) -> None:
        # The worker pairs a frame with the message nearest its stamp, so a reference that arrives while the
        # model runs on an older frame still matches that frame.
        self._recent: collections.deque = collections.deque(maxlen=maxlen)
        self._cache: tuple[object, tuple[int, int], np.ndarray] | None = None

    def add(self, msg, max_pixels: int) -> Problem | None:
        """Keep ``msg`` unless it is larger than ``max_pixels`` (checked by header, before decoding)."""
        if int(msg.height) * int(msg.width) > max_pixels:
            return Problem("sparse_depth_decode", f"sparse_depth {msg.width}x{msg.height} exceeds max_input_pixels")
        self._recent.append(msg)
        return None

    def clear(self) -> None:
        self._recent.clear()
        self._cache = None

    def lookup(self, frame_stamp_s: float, out_hw: tuple[int, int], tolerance_s: float,
               max_pixels: int) -> tuple[np.ndarray | None, Problem | None]:
        """(reference ``[H,W]`` float32 metres at ``out_hw``, NaN = none; or None and the problem)."""
        recent = list(self._recent)  # snapshot: the subscription thread appends concurrently
        if not recent:
            return None, Problem("sparse_depth_unsynced", "metric.mode is sparse_depth but no sparse_depth received yet")
        msg = min(recent, key=lambda m: abs(stamp_s(m.header.stamp) - frame_stamp_s))
        dt = abs(stamp_s(msg.header.stamp) - frame_stamp_s)
        if dt > tolerance_s:
            return None, Problem("sparse_depth_unsynced", f"nearest sparse_depth is {dt:.3f} s from the image "
                                 f"(metric.sync_tolerance_s {tolerance_s})")
        out_hw = (int(out_hw[0]), int(out_hw[1]))
        cached = self._cache
        if cached is not None and cached[0] is msg and cached[1] == out_hw:  # same message object
            return cached[2], None
        try:
            depth = decode_depth_m(msg, max_pixels, name="sparse_depth")
        except ImageDecodeError as exc:
            return None, Problem("sparse_depth_decode", str(exc))
        if not np.isfinite(depth).any():  # depth_m marks every invalid pixel NaN
            return None, Problem("sparse_depth_empty", "sparse_depth has no valid (finite, > 0) pixel; holding the "
                                 "last fit")
        if depth.shape != out_hw:
            h, w = depth.shape
            if abs((w / h) / (out_hw[1] / out_hw[0]) - 1.0) > ASPECT_TOLERANCE:
                return None, Problem("sparse_depth_size", f"sparse_depth {w}x{h} must have the image's aspect "
                                     f"ratio ({out_hw[1]}x{out_hw[0]})")
            depth = rescale_sparse(depth, out_hw)
        self._cache = (msg, out_hw, depth)
        return depth, None
