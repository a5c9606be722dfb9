"""Temporal stabilisation of a depth stream: blend with the previous output where nothing moved.

A per-frame network answers each noisy image a little differently, so a static view flickers. Where the
image did not change (camera and scene still), the output is an exponential average of the frames
(``s_t = blend * s_(t-1) + (1 - blend) * d_t``); everywhere else it is the new frame unchanged, so a moving
camera is never lagged:

- a pixel passes through when its (3x3-blurred, grey) image value changed by more than ``image_threshold``
  grey levels, or its depth by more than ``max_depth_change`` (relative), or either frame has no depth there;
- the whole frame passes through when more than ``max_moving_share`` of the pixels changed in the image
  (the camera moves: even textureless surfaces change depth then).

Depth may be metric or relative (any positive scale); the state is per stream. ``still_flicker`` is the raw
input's frame-to-frame change on the still pixels: a flicker estimate that needs no camera pose (for an alarm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from d3_perception.geometry import kernels

__all__ = ["StabilizerConfig", "TemporalStabilizer"]


@dataclass(frozen=True)
class StabilizerConfig:
    """Settings of :class:`TemporalStabilizer` (future node parameters ``temporal.*``).

    blend: weight of the previous output where the pixel is still, in [0, 1) (0 = no smoothing; the flicker
        estimate ``still_flicker`` is still made).
    image_threshold: grey-level change (0-255, after a 3x3 box blur) above which a pixel counts as changed.
    max_depth_change: relative depth change above which a pixel passes through (a new surface).
    max_moving_share: share of changed pixels above which the whole frame passes through (camera motion).
    """

    blend: float = 0.7
    image_threshold: float = 6.0
    max_depth_change: float = 0.1
    max_moving_share: float = 0.05

    def __post_init__(self) -> None:
        if not (isinstance(self.blend, (int, float)) and 0.0 <= self.blend < 1.0):
            raise ValueError(f"`blend` must be in [0, 1); got {self.blend!r}")
        for name in ("image_threshold", "max_depth_change"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"`{name}` must be a finite number > 0; got {value!r}")
        if not (isinstance(self.max_moving_share, (int, float)) and 0.0 <= self.max_moving_share <= 1.0):
            raise ValueError(f"`max_moving_share` must be in [0, 1]; got {self.max_moving_share!r}")


class TemporalStabilizer:
    """Per-stream state (not thread-safe: one worker calls it). ``reset()`` after a gap or a mode change."""

    def __init__(self, config: StabilizerConfig | None = None, compiled: bool = True) -> None:
        """compiled: the per-pixel work in one sweep by :mod:`~d3_perception.geometry.kernels` when
        numba is installed (the same outputs, 4-5x faster at 640x480); False = numpy only (the reference)."""
        self.config = config or StabilizerConfig()
        self._kernel = kernels.load() if compiled else None
        self.reset()

    def reset(self) -> None:
        self._depth: np.ndarray | None = None
        self._grey: np.ndarray | None = None
        self._raw: np.ndarray | None = None
        self._flicker: np.ndarray | None = None  # the compiled path's per-pixel flicker, 0 off the still pixels
        self.moving_share = math.nan  # share of changed image pixels in the last frame (NaN on the first)
        self.blended_share = 0.0  # share of valid pixels blended in the last frame
        # pose-free flicker of the raw input: mean |d_t - d_(t-1)| / d_t over the still pixels (NaN while moving)
        self.still_flicker = math.nan

    def update(self, depth: np.ndarray, rgb: np.ndarray) -> np.ndarray:
        """Stabilised ``[H,W]`` float32 depth (a new array; NaN where ``depth`` is invalid).

        depth: ``[H,W]`` float32, NaN or <= 0 = invalid. rgb: ``[H,W,3]`` uint8 image of this frame (its size
        may differ from the depth's; it is resized). A size change resets the state.
        """
        d = np.asarray(depth)
        if d.ndim != 2 or d.dtype != np.float32:
            raise ValueError(f"`depth` must be float32 [H,W]; got {d.dtype} {d.shape}")
        img = np.asarray(rgb)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"`rgb` must be uint8 [H,W,3]; got {img.dtype} {img.shape}")
        grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        if grey.shape != d.shape:
            grey = cv2.resize(grey, (d.shape[1], d.shape[0]), interpolation=cv2.INTER_AREA)
        grey = cv2.blur(grey.astype(np.float32), (3, 3))
        if self._kernel is not None and self._depth is not None and self._depth.shape == d.shape:
            out = self._update_compiled(np.ascontiguousarray(d), grey)
            self._grey = grey
            return out
        prev, prev_grey = self._depth, self._grey
        out = d.copy()
        self.blended_share, self.still_flicker = 0.0, math.nan
        if prev is not None and prev.shape == d.shape:
            changed = np.abs(grey - prev_grey) > self.config.image_threshold
            self.moving_share = float(np.count_nonzero(changed)) / changed.size
            if self.moving_share <= self.config.max_moving_share:
                with np.errstate(invalid="ignore"):
                    still = np.abs(d - prev) <= self.config.max_depth_change * d  # False where either is NaN
                    still &= prev > 0
                still &= ~changed
                if self.config.blend > 0:  # blend 0: no smoothing, but still the flicker estimate
                    a = np.float32(self.config.blend)
                    mixed = np.multiply(prev, a)
                    mixed += np.multiply(d, np.float32(1.0) - a)
                    np.copyto(out, mixed, where=still)
                valid, n_still = np.count_nonzero(d > 0), np.count_nonzero(still)
                self.blended_share = float(n_still) / valid if valid and self.config.blend > 0 else 0.0
                if n_still:
                    with np.errstate(invalid="ignore", divide="ignore"):  # d = 0 off the still pixels
                        rel = np.abs(d - self._raw) / d
                    self.still_flicker = float(np.mean(rel[still & np.isfinite(rel)], dtype=np.float64))
        else:
            self.moving_share = math.nan
        if prev is None or prev.shape != d.shape:
            self._depth, self._raw = out.copy(), d.copy()
        else:
            np.copyto(self._depth, out)
            np.copyto(self._raw, d)
        self._grey = grey
        return out

    def _update_compiled(self, d: np.ndarray, grey: np.ndarray) -> np.ndarray:
        """:meth:`update`'s work after the grey image, with a previous frame of the same size, by the compiled
        kernels: the same output, state and numbers (the flicker mean summed over the whole frame with zeros off
        the still pixels, so its float64 rounding differs in the last digits)."""
        cfg, kernel = self.config, self._kernel
        flat_grey, flat_prev_grey = grey.reshape(-1), self._grey.reshape(-1)
        self.moving_share = kernel.changed_pixels(flat_grey, flat_prev_grey, cfg.image_threshold) / grey.size
        self.blended_share, self.still_flicker = 0.0, math.nan
        if self.moving_share > cfg.max_moving_share:  # the camera moves: the frame passes through
            np.copyto(self._depth, d)
            np.copyto(self._raw, d)
            return d.copy()
        out = np.empty_like(d)
        if self._flicker is None or self._flicker.shape != d.shape:
            self._flicker = np.empty_like(d)
        valid, n_still, n_flicker = kernel.still_blend(
            d.reshape(-1), self._depth.reshape(-1), self._raw.reshape(-1), flat_grey, flat_prev_grey,
            cfg.image_threshold, cfg.max_depth_change, cfg.blend, out.reshape(-1), self._flicker.reshape(-1))
        self.blended_share = n_still / valid if valid and cfg.blend > 0 else 0.0
        if n_still:
            self.still_flicker = float(self._flicker.sum(dtype=np.float64)) / n_flicker if n_flicker else math.nan
        return out
