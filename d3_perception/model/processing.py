"""Frame checks, resize/pad to the network grid and back: numpy + OpenCV, shared by every backend.

Stateless functions (like diffusers' ``MarigoldImageProcessor``) so that the torch, ONNX Runtime and
TensorRT backends pre- and post-process identically and can be tested without weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from d3_perception.model.config import PAD_MULTIPLE, check_processing_resolution

__all__ = ["MIN_SIDE_PX", "Geometry", "check_inputs", "plan_geometry", "postprocess", "preprocess"]

MIN_SIDE_PX = 8  # below this a frame holds no usable structure; resizing it up is meaningless
MAX_SIDE_PX = 16384


@dataclass(frozen=True)
class Geometry:
    """How one input size maps onto the network grid.

    in_hw: input (H, W); resized_hw: (h, w) after the aspect-preserving resize (long side = resolution);
    padded_hw: (h_pad, w_pad) network input, multiples of 64; padding is added at the bottom and right.
    """

    in_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    padded_hw: tuple[int, int]


def check_inputs(images: object) -> np.ndarray:
    """Validate a frame batch and return it as ``[N,H,W,3]`` (a view when possible).

    Accepts ``[H,W,3]`` or ``[N,H,W,3]`` RGB, uint8 (0..255) or float32 in [0,1] (numpy, or a torch tensor
    which is moved to the CPU). Raises ``ValueError`` naming the rule and what was received.
    """
    if not isinstance(images, np.ndarray):
        if hasattr(images, "detach") and hasattr(images, "cpu"):  # a torch tensor, without importing torch
            images = images.detach().cpu().numpy()
        else:
            raise ValueError(f"`images` must be a numpy array [N,H,W,3] or [H,W,3]; got {type(images).__name__}")
    if images.dtype not in (np.uint8, np.float32):
        raise ValueError(f"`images` must be uint8 or float32 RGB [N,H,W,3]; got {images.dtype} {images.shape}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"`images` must be RGB with shape [H,W,3] or [N,H,W,3]; got {images.shape}")
    n, h, w, _ = images.shape
    if n < 1:
        raise ValueError(f"`images` must hold at least one frame; got shape {images.shape}")
    if min(h, w) < MIN_SIDE_PX or max(h, w) > MAX_SIDE_PX:
        raise ValueError(f"`images` must be between {MIN_SIDE_PX} and {MAX_SIDE_PX} px per side; got {h}x{w}")
    if images.dtype == np.float32:
        if not np.isfinite(images).all():
            raise ValueError("`images` must be finite; got NaN or Inf values")
        lo, hi = float(images.min()), float(images.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"float32 `images` must lie in [0, 1]; got range [{lo:.4g}, {hi:.4g}]")
    return images


def plan_geometry(in_hw: tuple[int, int], resolution: int) -> Geometry:
    """Long side -> ``resolution`` (aspect kept), then pad the short side up to a multiple of 64."""
    check_processing_resolution(resolution, "resolution")
    h, w = int(in_hw[0]), int(in_hw[1])
    scale = resolution / max(h, w)
    rh, rw = max(1, round(h * scale)), max(1, round(w * scale))
    ph = -(-rh // PAD_MULTIPLE) * PAD_MULTIPLE
    pw = -(-rw // PAD_MULTIPLE) * PAD_MULTIPLE
    return Geometry(in_hw=(h, w), resized_hw=(rh, rw), padded_hw=(ph, pw))


def preprocess(images: np.ndarray, resolution: int, input_range: tuple[float, float] = (-1.0, 1.0),
               ) -> tuple[np.ndarray, Geometry]:
    """Checked frames ``[N,H,W,3]`` -> network input ``[N,3,h_pad,w_pad]`` float32 in ``input_range``.

    Downscaling uses area interpolation (no aliasing), upscaling bilinear; the pad replicates the edge so
    that the VAE sees no artificial border.
    """
    images = check_inputs(images)
    n, h, w, _ = images.shape
    geo = plan_geometry((h, w), resolution)
    rh, rw = geo.resized_hw
    ph, pw = geo.padded_hw
    interp = cv2.INTER_AREA if rh * rw < h * w else cv2.INTER_LINEAR
    lo, hi = input_range
    out = np.empty((n, 3, ph, pw), dtype=np.float32)  # [N,3,h_pad,w_pad]
    for i in range(n):
        frame = images[i].astype(np.float32)
        if images.dtype == np.uint8:
            frame *= 1.0 / 255.0
        if (rh, rw) != (h, w):
            frame = cv2.resize(frame, (rw, rh), interpolation=interp)  # [h,w,3]
        if (ph, pw) != (rh, rw):
            frame = cv2.copyMakeBorder(frame, 0, ph - rh, 0, pw - rw, cv2.BORDER_REPLICATE)  # [h_pad,w_pad,3]
        out[i] = frame.transpose(2, 0, 1) * (hi - lo) + lo
    return out, geo


def _resize_chw(maps: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``[C,h,w]`` -> ``[C,H,W]`` bilinear (area when shrinking)."""
    c, h, w = maps.shape
    if (h, w) == tuple(hw):
        return maps
    interp = cv2.INTER_AREA if hw[0] * hw[1] < h * w else cv2.INTER_LINEAR
    hwc = cv2.resize(np.ascontiguousarray(maps.transpose(1, 2, 0)), (hw[1], hw[0]), interpolation=interp)
    if hwc.ndim == 2:
        hwc = hwc[:, :, None]
    return hwc.transpose(2, 0, 1)


def postprocess(outputs: dict[str, np.ndarray], geo: Geometry) -> dict[str, np.ndarray]:
    """Network outputs on the padded grid -> input size.

    ``outputs``: ``"depth"`` ``[N,1,h_pad,w_pad]`` (or ``[N,h_pad,w_pad]``) in [0,1]; ``"normals"``
    ``[N,3,h_pad,w_pad]`` unit vectors. Returns ``"depth"`` ``[N,H,W]`` float32 in [0,1] and ``"normals"``
    ``[N,3,H,W]`` float32 unit vectors (renormalised after interpolation).
    """
    rh, rw = geo.resized_hw
    result: dict[str, np.ndarray] = {}
    for task, arr in outputs.items():
        arr = np.asarray(arr, dtype=np.float32)
        if arr.ndim == 3:
            arr = arr[:, None]
        arr = arr[:, :, :rh, :rw]  # unpad: [N,C,h,w]
        resized = np.stack([_resize_chw(a, geo.in_hw) for a in arr])  # [N,C,H,W]
        if task == "depth":
            result[task] = np.clip(resized[:, 0], 0.0, 1.0)  # [N,H,W]
        elif task == "normals":
            norm = np.linalg.norm(resized, axis=1, keepdims=True)
            result[task] = (resized / np.maximum(norm, 1e-6)).astype(np.float32)  # [N,3,H,W]
        else:
            result[task] = resized
    return result
