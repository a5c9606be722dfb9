"""Camera sensor effects on a rendered RGB image: exposure, gamma, vignetting, blur, noise, JPEG artefacts.

Only the image changes; depth and normals stay exact. Effects are drawn per frame from a seeded
``numpy.random.Generator`` so a frame index always gives the same image.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["SensorModel", "apply_sensor"]


@dataclass(frozen=True)
class SensorModel:
    """Ranges the per-frame effects are drawn from (uniformly; a ``(lo, hi)`` pair each).

    ``exposure``: gain on linear intensity; ``gamma``: extra gamma on the [0,1] image; ``vignetting``: relative
    brightness lost in the image corners; ``blur_px``: Gaussian blur sigma in pixels (below 0.3 = none);
    ``noise``: Gaussian noise sigma in [0,1] intensity; ``jpeg_quality``: 1-100 (``jpeg_probability`` of the
    frames are JPEG-compressed).
    """

    exposure: tuple[float, float] = (0.7, 1.4)
    gamma: tuple[float, float] = (0.8, 1.25)
    vignetting: tuple[float, float] = (0.0, 0.4)
    blur_px: tuple[float, float] = (0.0, 1.0)
    noise: tuple[float, float] = (0.0, 0.03)
    jpeg_quality: tuple[float, float] = (35.0, 95.0)
    jpeg_probability: float = 0.5

    def __post_init__(self) -> None:
        for name in ("exposure", "gamma", "vignetting", "blur_px", "noise", "jpeg_quality"):
            lo, hi = getattr(self, name)
            if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo <= hi):
                raise ValueError(f"`{name}` must be a (lo, hi) range with 0 <= lo <= hi; got {(lo, hi)}")
        if not 0.0 <= self.jpeg_probability <= 1.0:
            raise ValueError(f"`jpeg_probability` must be in [0, 1]; got {self.jpeg_probability}")


def apply_sensor(rgb: np.ndarray, model: SensorModel, rng: np.random.Generator) -> np.ndarray:
    """``rgb`` [H,W,3] uint8 -> [H,W,3] uint8 with one draw of ``model``'s effects."""
    img = np.asarray(rgb)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"`rgb` must be uint8 [H,W,3]; got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    exposure, gamma, vignetting, blur, noise, quality = (rng.uniform(*getattr(model, k)) for k in (
        "exposure", "gamma", "vignetting", "blur_px", "noise", "jpeg_quality"))
    use_jpeg = rng.random() < model.jpeg_probability
    x = img.astype(np.float32) / 255.0
    x = np.clip(x * np.float32(exposure), 0.0, 1.0) ** np.float32(gamma)
    if vignetting > 0:
        yy, xx = np.ogrid[0:h, 0:w]
        r2 = (((xx - (w - 1) / 2) / (w / 2)) ** 2 + ((yy - (h - 1) / 2) / (h / 2)) ** 2).astype(np.float32)  # 2 at corners
        x *= (1.0 - np.float32(vignetting) * np.clip(r2 / 2.0, 0.0, 1.0))[..., None]
    if blur >= 0.3:
        x = cv2.GaussianBlur(x, (0, 0), sigmaX=float(blur))
    if noise > 0:
        x = x + np.float32(noise) * rng.standard_normal(x.shape, dtype=np.float32)
    out = (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if use_jpeg:
        ok, buf = cv2.imencode(".jpg", out[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(round(quality))])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1].copy()
    return out
