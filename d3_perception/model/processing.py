"""Frame checks, resize/pad to the network grid and back: numpy + OpenCV, shared by every backend.

Stateless functions (like diffusers' ``MarigoldImageProcessor``) so that the torch, ONNX Runtime and
TensorRT backends pre- and post-process identically and can be tested without weights.

Two resize policies (``ModelConfig.resize_policy``):
- ``keep_aspect`` (the project's models): long side -> resolution (area when shrinking, bilinear when
  growing), edge-replicated pad to a multiple of 64; the network applies the task heads (clamp, channel mean,
  normalise) and the maps are unpadded and resized back.
- ``squash`` (official D³ checkpoints, as their training and inference do): every frame is resized to
  resolution x resolution, bilinear without antialiasing even when shrinking; the network returns the raw
  decoded maps ``[N,3,h,w]`` and :func:`postprocess` resizes them back *before* clamping, then applies the
  heads. Order and interpolation follow the official ``inference_depth.py`` (F.interpolate bilinear,
  align_corners=False) + ``VaeImageProcessor.postprocess`` (clamp, then the mean over channels).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from d3_perception.model.config import PAD_MULTIPLE, RESIZE_POLICIES, check_processing_resolution

__all__ = ["MIN_SIDE_PX", "Geometry", "apply_heads", "check_inputs", "plan_geometry", "postprocess", "preprocess"]

MIN_SIDE_PX = 8  # below this a frame holds no usable structure; resizing it up is meaningless
MAX_SIDE_PX = 16384


@dataclass(frozen=True)
class Geometry:
    """How one input size maps onto the network grid.

    in_hw: input (H, W); resized_hw: (h, w) after the resize (keep_aspect: long side = resolution; squash:
    resolution x resolution); padded_hw: (h_pad, w_pad) network input, multiples of 64; padding is added at
    the bottom and right (none with squash). resize_policy: "keep_aspect" or "squash" (module docstring).
    """

    in_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    padded_hw: tuple[int, int]
    resize_policy: str = "keep_aspect"


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


def plan_geometry(in_hw: tuple[int, int], resolution: int, resize_policy: str = "keep_aspect") -> Geometry:
    """keep_aspect: long side -> ``resolution``, then pad the short side up to a multiple of 64.
    squash: ``resolution`` x ``resolution`` whatever the aspect ratio."""
    check_processing_resolution(resolution, "resolution")
    if resize_policy not in RESIZE_POLICIES:
        raise ValueError(f"`resize_policy` must be one of {RESIZE_POLICIES}; got {resize_policy!r}")
    h, w = int(in_hw[0]), int(in_hw[1])
    if resize_policy == "squash":
        side = (resolution, resolution)
        return Geometry(in_hw=(h, w), resized_hw=side, padded_hw=side, resize_policy="squash")
    scale = resolution / max(h, w)
    rh, rw = max(1, round(h * scale)), max(1, round(w * scale))
    ph = -(-rh // PAD_MULTIPLE) * PAD_MULTIPLE
    pw = -(-rw // PAD_MULTIPLE) * PAD_MULTIPLE
    return Geometry(in_hw=(h, w), resized_hw=(rh, rw), padded_hw=(ph, pw))


def preprocess(images: np.ndarray, resolution: int, input_range: tuple[float, float] = (-1.0, 1.0),
               resize_policy: str = "keep_aspect") -> tuple[np.ndarray, Geometry]:
    """Checked frames ``[N,H,W,3]`` -> network input ``[N,3,h_pad,w_pad]`` float32 in ``input_range``.

    keep_aspect: downscaling uses area interpolation (no aliasing), upscaling bilinear; the pad replicates
    the edge so that the VAE sees no artificial border. squash: bilinear both ways (cv2 INTER_LINEAR, i.e.
    torch's bilinear with align_corners=False and no antialias), as the official checkpoints were trained.
    """
    images = check_inputs(images)
    n, h, w, _ = images.shape
    geo = plan_geometry((h, w), resolution, resize_policy)
    rh, rw = geo.resized_hw
    ph, pw = geo.padded_hw
    shrink = rh * rw < h * w and resize_policy == "keep_aspect"
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
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


def _resize_chw(maps: np.ndarray, hw: tuple[int, int], area_when_shrinking: bool = True) -> np.ndarray:
    """``[C,h,w]`` -> ``[C,H,W]`` bilinear (area when shrinking, unless ``area_when_shrinking`` is False)."""
    c, h, w = maps.shape
    if (h, w) == tuple(hw):
        return maps
    interp = cv2.INTER_AREA if area_when_shrinking and hw[0] * hw[1] < h * w else cv2.INTER_LINEAR
    hwc = cv2.resize(np.ascontiguousarray(maps.transpose(1, 2, 0)), (hw[1], hw[0]), interpolation=interp)
    if hwc.ndim == 2:
        hwc = hwc[:, :, None]
    return hwc.transpose(2, 0, 1)


def apply_heads(task: str, decoded: np.ndarray) -> np.ndarray:
    """Raw decoded maps ``[N,3,H,W]`` (VAE output, nominally [-1,1], unclamped) -> the task's output.

    depth: clamp to [-1,1], mean over channels, mapped to [0,1] -> ``[N,1,H,W]``; normals: clamp, then unit
    length -> ``[N,3,H,W]``. The same heads as ``D3Predictor.forward`` applies on the network grid.
    """
    y = np.clip(np.asarray(decoded, dtype=np.float32), -1.0, 1.0)
    if y.ndim != 4 or y.shape[1] != 3:
        raise ValueError(f"`decoded` must be raw decoded maps [N,3,H,W]; got {y.shape}")
    if task == "depth":
        return (y.mean(axis=1, keepdims=True) + 1.0) * 0.5
    if task == "normals":
        return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-6)
    raise ValueError(f"`task` must be 'depth' or 'normals'; got {task!r}")


def postprocess(outputs: dict[str, np.ndarray], geo: Geometry) -> dict[str, np.ndarray]:
    """Network outputs on the padded grid -> input size.

    keep_aspect: ``outputs`` ``"depth"`` ``[N,1,h_pad,w_pad]`` (or ``[N,h_pad,w_pad]``) in [0,1];
    ``"normals"`` ``[N,3,h_pad,w_pad]`` unit vectors. squash: each task's raw decoded maps ``[N,3,h,w]``
    (unclamped), resized back bilinearly (no antialias), then clamped and reduced by :func:`apply_heads`.
    Returns ``"depth"`` ``[N,H,W]`` float32 in [0,1] and ``"normals"`` ``[N,3,H,W]`` float32 unit vectors
    (renormalised after interpolation).
    """
    if geo.resize_policy == "squash":
        outputs = {task: apply_heads(task, np.stack([_resize_chw(np.asarray(a, np.float32), geo.in_hw, False)
                                                     for a in arr]))  # resize the raw maps, then clamp
                   for task, arr in outputs.items()}
        geo = Geometry(in_hw=geo.in_hw, resized_hw=geo.in_hw, padded_hw=geo.in_hw)  # already at input size
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
