"""Frames along a scene's smooth camera trajectory at a fixed rate."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from d3_perception.geometry.intrinsics import intrinsics_from_fov
from d3_perception.synthetic.render import Frame, _check_size, render
from d3_perception.synthetic.scene import make_scene
from d3_perception.synthetic.sensor import apply_sensor

__all__ = ["SyntheticSequence"]


class SyntheticSequence:
    """Deterministic frames of ``make_scene(seed, kind)`` seen along its trajectory.

    Frame ``i`` is rendered at ``t_s = i / fps`` with a centred pinhole camera of horizontal field of view
    ``hfov_deg`` (None = the scene's own, 70° when it has none) and size ``size_hw`` = (H, W). Scenes with a
    sensor model (the wide world) get its effects on the RGB, drawn from (seed, i). Iterating yields ``num_frames`` frames (forever when None);
    ``frame(i)`` renders any index directly. Trajectories are closed loops, so long runs stay in the scene.
    """

    def __init__(self, seed: int = 0, size_hw: tuple[int, int] = (240, 320), fps: float = 10.0,
                 kind: str = "room", *, hfov_deg: float | None = None, num_frames: int | None = None) -> None:
        if not (isinstance(fps, (int, float)) and np.isfinite(fps) and fps > 0):
            raise ValueError(f"`fps` must be a finite number > 0; got {fps!r}")
        if num_frames is not None and (not isinstance(num_frames, int) or num_frames < 0):
            raise ValueError(f"`num_frames` must be an integer >= 0 or None; got {num_frames!r}")
        self.size_hw = _check_size(size_hw)
        self.scene = make_scene(seed, kind)
        self.seed, self.kind, self.fps, self.num_frames = seed, kind, float(fps), num_frames
        if hfov_deg is None:
            hfov_deg = self.scene.hfov_deg if self.scene.hfov_deg is not None else 70.0
        self.K = intrinsics_from_fov(self.size_hw, hfov_deg)  # [3,3] float64

    def pose(self, index: int) -> np.ndarray:
        """Camera(optical)-to-world ``[4,4]`` of frame ``index``."""
        return self.scene.trajectory(index / self.fps)

    def frame(self, index: int) -> Frame:
        if not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"`index` must be an integer >= 0; got {index!r}")
        out = render(self.scene, self.pose(int(index)), self.K, self.size_hw)
        if self.scene.sensor is not None:
            out.rgb = apply_sensor(out.rgb, self.scene.sensor, np.random.default_rng([int(self.seed), int(index), 5]))
        out.t_s, out.index = index / self.fps, int(index)
        return out

    def __len__(self) -> int:
        if self.num_frames is None:
            raise TypeError("an endless SyntheticSequence (num_frames=None) has no length")
        return self.num_frames

    def __iter__(self) -> Iterator[Frame]:
        i = 0
        while self.num_frames is None or i < self.num_frames:
            yield self.frame(i)
            i += 1
