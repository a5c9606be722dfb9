"""Per-pixel confidence of a predicted depth map, in [0, 1] (1 = trust), and gating by it.

Three cues, each mapped to [0, 1] with ``scale / (scale + x)`` (1 at ``x = 0``, 0.5 at ``x = scale``), then
combined by a weighted geometric mean (or the minimum; ``docs/confidence.md`` has the measurements behind each
default), so the result stays on the scale of one cue whatever the number of cues:

- ``edges``: relative depth step ``max(|z(u+1) - z(u-1)|, |z(v+1) - z(v-1)|) / z``, spread by ``edge_radius_px``
  (a minimum filter on the confidence): where back-projection puts flying pixels between two surfaces;
- ``normals``: ``x = 1 - cos`` of the angle between the model's normals and the normals of the predicted depth
  (closed form of :func:`~d3_perception.geometry.normals.normals_from_depth`'s cross product, see
  :func:`_depth_normal_cosine`): the two outputs disagree where the depth is wrong in shape;
- ``sparse``: ``|z - ref| / ref`` over the sparse metric reference points, robustly: the median per cell of a
  half ``residual_window`` x the image height, averaged over 3 x 3 cells (weighted by
  the returns per cell), so a minority of outlier returns does not count against a correct depth; no
  reference nearby = no evidence = 1.

The work runs on a grid ``step`` times coarser than the frame (the model's depth is itself upsampled from its
processing resolution) and the combined map is resized back with nearest neighbour, so the published map
and the gate agree pixel for pixel. Invalid depth (NaN, <= 0) gets confidence 0.

The per-pixel arithmetic runs in numba kernels (:mod:`~d3_perception.geometry.kernels`) when numba is
installed; the numpy code here is the reference they equal bit for bit, and the fallback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from d3_perception.geometry import kernels
from d3_perception.geometry.intrinsics import check_intrinsics

__all__ = [
    "COMBINE_RULES",
    "DEFAULT_MIN_CONFIDENCE",
    "CONFIDENCE_SOURCES",
    "ConfidenceConfig",
    "ConfidenceEstimator",
    "SparsePoints",
    "gate_depth",
    "summarize_confidence",
]

CONFIDENCE_SOURCES = ("edges", "normals", "sparse")
COMBINE_RULES = ("geomean", "min")
# a reference return's relative residual counts at most this much in its cell's median: beyond 100 % off it
# says "wrong" no louder (a 0.3 m reflection in front of a 3 m wall is 900 % off)
RESIDUAL_CAP = 1.0
# the node's default gate (min_confidence): the largest threshold keeping >= 85 % of the points on the tuning
# scenes of docs/confidence.md (python -m d3_perception.evaluation.confidence_study picks it)
DEFAULT_MIN_CONFIDENCE = 0.037


@dataclass(frozen=True)
class ConfidenceConfig:
    """Settings of :class:`ConfidenceEstimator` (future node parameters ``confidence.*``). The defaults are the
    values tuned in docs/confidence.md (lowest AUSE on the tuning scenes).

    sources: cues used, a subset of :data:`CONFIDENCE_SOURCES` (``sparse`` only acts when a reference is given;
        ``normals`` only when model normals are given).
    edge_scale: relative depth step (over 2 px) at which the edge cue is 0.5.
    edge_radius_px: radius of the minimum filter that spreads low edge confidence (in grid pixels), 0 = off.
    normal_scale: ``1 - cos(angle)`` at which the normal cue is 0.5 (0.005 = 5.7 degrees).
    residual_scale: local relative residual against the sparse reference at which the sparse cue is 0.5.
    residual_window: box filter size of the sparse cue as a fraction of the image height.
    sparse_weight: weight of the ``sparse`` cue in the geometric mean (the others weigh 1; > 1: the reference
        outweighs the image cues where it exists; frames without a reference are unaffected).
    combine: ``geomean`` (weighted geometric mean) or ``min`` of the cues.
    grid_long_side: the cues are computed on every ``step``-th pixel with ``step = ceil(max(H, W) /
        grid_long_side)`` (1 for frames up to that size), then resized to the frame.
    """

    sources: tuple[str, ...] = CONFIDENCE_SOURCES
    edge_scale: float = 0.1
    edge_radius_px: int = 1
    normal_scale: float = 0.005
    residual_scale: float = 0.005
    residual_window: float = 0.15
    sparse_weight: float = 8.0
    combine: str = "geomean"
    grid_long_side: int = 160

    def __post_init__(self) -> None:
        sources = tuple(self.sources)
        if not sources or any(s not in CONFIDENCE_SOURCES for s in sources) or len(set(sources)) != len(sources):
            raise ValueError(f"`sources` must be distinct names from {CONFIDENCE_SOURCES}; got {self.sources!r}")
        object.__setattr__(self, "sources", sources)
        for name in ("edge_scale", "normal_scale", "residual_scale", "residual_window", "sparse_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"`{name}` must be a finite number > 0; got {value!r}")
        if not (isinstance(self.edge_radius_px, int) and 0 <= self.edge_radius_px <= 32):
            raise ValueError(f"`edge_radius_px` must be an integer in [0, 32]; got {self.edge_radius_px!r}")
        if self.combine not in COMBINE_RULES:
            raise ValueError(f"`combine` must be one of {COMBINE_RULES}; got {self.combine!r}")
        if not (isinstance(self.grid_long_side, int) and self.grid_long_side >= 16):
            raise ValueError(f"`grid_long_side` must be an integer >= 16; got {self.grid_long_side!r}")

    def step(self, hw: tuple[int, int]) -> int:
        """Subsampling step of the cue grid for a frame of ``hw`` = (H, W)."""
        return max(1, -(-max(hw) // self.grid_long_side))


class SparsePoints:
    """The valid pixels of a sparse reference ``[H,W]`` (finite, > 0), found once: a reference message serves
    several frames (the node caches it), and scanning the full frame for its few returns was the sparse cue's
    largest cost. Treat as immutable (it does not see later changes of the array it was made from).

    shape: ``(H, W)``; index: ``[M]`` int64 flat pixel indices; values: ``[M]`` float32 reference depths.
    """

    def __init__(self, sparse_m: np.ndarray) -> None:
        ref = np.asarray(sparse_m)
        if ref.ndim != 2:
            raise ValueError(f"`sparse_m` must be [H,W]; got shape {ref.shape}")
        self.shape = ref.shape
        with np.errstate(invalid="ignore"):
            self.index = np.flatnonzero(ref > 0)  # NaN compares False
        self.values = ref.reshape(-1)[self.index].astype(np.float32)
        self._cells: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def by_cell(self, cell: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(bins, index, values)``, each ``[M]``, ordered by ``bins``: the index (int64, row-major) of each
        point's ``cell`` x ``cell`` block, its flat pixel index and its reference depth (cached per ``cell``;
        the order makes the per-frame sort of the cell medians a merge of short runs)."""
        cached = self._cells.get(cell)
        if cached is None:
            cells_w = -(-self.shape[1] // cell)
            bins = (self.index // self.shape[1]) // cell * cells_w + (self.index % self.shape[1]) // cell
            order = np.argsort(bins, kind="stable")
            cached = (bins[order], self.index[order], self.values[order])
            self._cells[cell] = cached
        return cached


class ConfidenceEstimator:
    """Confidence maps of one stream with work buffers reused across frames (not thread-safe: one worker)."""

    def __init__(self, config: ConfidenceConfig | None = None, compiled: bool = True) -> None:
        """compiled: use :mod:`~d3_perception.geometry.kernels`'s one-sweep kernels when numba is
        installed (the numpy code otherwise, and always when ``parts`` are asked for); False = numpy only (the
        reference the kernels are tested against)."""
        self.config = config or ConfidenceConfig()
        self._kernel = kernels.load() if compiled else None
        self._buffers: dict[str, np.ndarray] = {}
        self._grids: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._last: tuple[np.ndarray, np.ndarray] | None = None  # (grid confidence, grid validity) of the last frame
        self._last_hw: tuple[int, int] = (0, 0)  # its frame size

    def _buf(self, name: str, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        a = self._buffers.get(name)
        if a is None or a.shape != shape or a.dtype != dtype:
            a = np.empty(shape, dtype)
            self._buffers[name] = a
        return a

    def compute(self, depth: np.ndarray, K=None, model_normals=None, sparse_m: np.ndarray | SparsePoints | None = None,
                out: np.ndarray | None = None, parts: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Confidence ``[H,W]`` float32 in [0, 1] of ``depth``: :meth:`rate` then :meth:`full_map`.

        depth: ``[H,W]`` positive depth (metres, or any positive proxy such as the ``depth_range`` mapping of
            the relative output: the cues are scale-free); NaN or <= 0 = invalid (confidence 0).
        K: ``[3,3]`` intrinsics of ``depth`` (needed by the ``normals`` cue).
        model_normals: the model's unit normals in the camera optical frame, ``[3,H,W]``, ``[H,W,3]`` or three
            ``[H,W]`` planes; None = no ``normals`` cue.
        sparse_m: ``[H,W]`` sparse metric reference (NaN or <= 0 = none) in the units of ``depth``, or its
            :class:`SparsePoints` (cheaper when one reference serves several frames); None = no ``sparse`` cue.
        out: optional float32 ``[H,W]`` to write into; without it the result is a buffer of this estimator,
            valid until the next call.
        parts: if given, filled with each computed cue's ``[H,W]`` map (copies; for evaluation).
        """
        self.rate(depth, K, model_normals, sparse_m, parts)
        return self.full_map(out)

    def rate(self, depth: np.ndarray, K=None, model_normals=None, sparse_m: np.ndarray | SparsePoints | None = None,
             parts: dict[str, np.ndarray] | None = None) -> None:
        """Compute the confidence of ``depth`` on the cue grid only (arguments as :meth:`compute`): enough for
        :meth:`summary` and :meth:`any_below`; :meth:`full_map` makes the frame-size map when something needs it
        (a node publishing only ``~/info`` never does)."""
        c = self.config
        z_full = np.asarray(depth)
        if z_full.ndim != 2 or z_full.dtype != np.float32 or min(z_full.shape) < 3:
            raise ValueError(f"`depth` must be float32 [H,W] with H, W >= 3; got {z_full.dtype} {z_full.shape}")
        hw = z_full.shape
        step = c.step(hw)
        grid = (-(-hw[0] // step), -(-hw[1] // step))
        use_normals = "normals" in c.sources and model_normals is not None
        if use_normals and K is None:
            raise ValueError("`K` must be given with `model_normals` (the normals cue needs intrinsics); got None")
        if self._kernel is not None and parts is None and min(grid) >= 2:
            self._rate_compiled(z_full, step, grid, K, model_normals if use_normals else None, sparse_m)
            return
        z = self._down(z_full, step)
        conf = self._buf("conf", grid)
        cues = []
        with np.errstate(invalid="ignore", divide="ignore"):
            if "edges" in c.sources or use_normals:
                du, dv = self._differences(z)
            if "edges" in c.sources:
                cues.append(("edges", self._edges(z, du, dv)))
            if use_normals:
                cues.append(("normals", self._normals(z, du, dv, check_intrinsics(K), _planes(model_normals, hw),
                                                      step)))
            evidence = None  # [grid] 0-1: how much sparse reference is near each pixel
            if "sparse" in c.sources and sparse_m is not None:
                cue, evidence = self._sparse(z_full, sparse_m, grid)
                cues.append(("sparse", cue))
            if not cues:
                conf.fill(1.0)
            else:
                np.copyto(conf, cues[0][1])
                for _, cue in cues[1:]:
                    (np.multiply if c.combine == "geomean" else np.minimum)(conf, cue, out=conf)
                if c.combine == "geomean":
                    # per-pixel total weight: 1 per image cue, sparse_weight where the reference gives evidence
                    # (where it gives none its cue is 1 and must not dilute the others)
                    images = float(len(cues) - (evidence is not None))
                    if evidence is not None and evidence.min() >= 1.0:  # reference near every pixel (scan rows)
                        images, evidence = images + c.sparse_weight, None
                    if evidence is None:
                        if images != 1.0:
                            np.power(conf, np.float32(1.0 / images), out=conf)
                    else:
                        w = np.multiply(evidence, np.float32(c.sparse_weight), out=evidence)
                        w += np.float32(images)
                        np.divide(np.float32(1.0), w, out=w)
                        np.power(conf, w, out=conf)
            # invalid depth -> 0 (not (z > 0) also catches NaN)
            valid = np.greater(z, 0, out=self._buf("valid", grid, bool))
            np.copyto(conf, np.float32(0.0), where=~valid)
            np.minimum(conf, np.float32(1.0), out=conf)  # float32 rounding of the powers can give 1 + 1e-7
        self._last = (conf, valid)
        self._last_hw = hw
        if parts is not None:
            for name, cue in cues:
                parts[name] = self._up(cue, hw, None).copy()

    def _rate_compiled(self, z_full: np.ndarray, step: int, grid: tuple[int, int], K, model_normals,
                       sparse_m) -> None:
        """:meth:`rate` by the compiled kernels (same arguments, checked; ``model_normals`` None = no normals cue):
        the same grid copies, erosion and powers as the numpy path, the per-pixel arithmetic in two sweeps."""
        c, kernel = self.config, self._kernel
        use_edges, use_normals = "edges" in c.sources, model_normals is not None
        z = self._down(z_full, step)
        conf, valid = self._buf("conf", grid), self._buf("valid", grid, bool)
        edges, normals = self._buf("edges", grid), self._buf("normals", grid)
        if use_edges or use_normals:
            m, u, v, fx, fy = (z,) * 3, z[0], z[0], 1.0, 1.0  # placeholders of an unused normals cue
            if use_normals:
                K = check_intrinsics(K)
                m = tuple(np.ascontiguousarray(self._down(p, step)) for p in _planes(model_normals, z_full.shape))
                u, v = self._grid_offsets(grid, step, K)
                u, v, fx, fy = u[0], v[:, 0], float(K[0, 0]) / step, float(K[1, 1]) / step
            kernel.image_cues(z, use_edges, c.edge_scale, *m, use_normals, fx, fy, u, v, c.normal_scale, edges,
                              normals)
            if use_edges:
                self._spread_edges(edges)
        sparse_cue = evidence = None
        if "sparse" in c.sources and sparse_m is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                sparse_cue, evidence = self._sparse(z_full, sparse_m, grid)
        images = float(use_edges + use_normals)
        use_evidence = evidence is not None and c.combine == "geomean"
        if use_evidence and evidence.min() >= 1.0:  # reference near every pixel (scan rows): as the numpy path
            images, use_evidence = images + c.sparse_weight, False
        kernel.combine(z, edges, use_edges, normals, use_normals, conf if sparse_cue is None else sparse_cue,
                       sparse_cue is not None, conf if evidence is None else evidence, use_evidence,
                       c.combine == "min", images, c.sparse_weight, conf, valid)
        if c.combine == "geomean":
            if use_evidence:
                np.power(conf, evidence, out=conf)  # the kernel left the per-pixel exponent in `evidence`
            elif images not in (0.0, 1.0):
                np.power(conf, np.float32(1.0 / images), out=conf)
        np.minimum(conf, np.float32(1.0), out=conf)  # float32 rounding of the powers can give 1 + 1e-7
        self._last = (conf, valid)
        self._last_hw = z_full.shape

    def _grid_offsets(self, grid: tuple[int, int], step: int, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel offsets from the principal point of the grid pixels, ``u`` ``[1,gw]`` and ``v`` ``[gh,1]``
        float32: grid pixel (i, j) is frame pixel (step*i, step*j), so the grid's intrinsics are fx/step,
        cx/step, ... (cached for the last grid and K)."""
        key = (grid, step, K.tobytes())
        if key not in self._grids:
            u = (np.arange(grid[1], dtype=np.float64) - K[0, 2] / step).astype(np.float32)[None, :]
            v = (np.arange(grid[0], dtype=np.float64) - K[1, 2] / step).astype(np.float32)[:, None]
            self._grids = {key: (u, v)}
        return self._grids[key]

    def full_map(self, out: np.ndarray | None = None) -> np.ndarray:
        """The last :meth:`rate`'s confidence at the frame size ``[H,W]`` float32 (nearest-neighbour from the
        grid). out: optional float32 ``[H,W]`` to write into; without it a buffer of this estimator (or the grid
        itself at step 1), valid until the next call."""
        if self._last is None:
            raise RuntimeError("full_map() before rate(): no frame rated yet")
        hw, conf = self._last_hw, self._last[0]
        if out is not None and (out.shape != hw or out.dtype != np.float32):
            raise ValueError(f"`out` must be float32 {hw}; got {out.dtype} {out.shape}")
        return self._up(conf, hw, out if out is not None else (None if conf.shape == hw else self._buf("full", hw)))

    def gate(self, depth: np.ndarray, min_confidence: float, out: np.ndarray | None = None) -> np.ndarray | None:
        """NaN in ``depth`` ``[H,W]`` float32 (in place) where the last :meth:`rate`'s confidence is below
        ``min_confidence``: :func:`gate_depth` with :meth:`full_map`, done on the grid when the frame is a
        whole number of ``step x step`` blocks (what the nearest resize repeats), so no frame-size map or
        compare is needed. Otherwise the frame-size map is made (into ``out``, as :meth:`full_map`) and
        returned; None when none was made."""
        if self._last is None:
            raise RuntimeError("gate() before rate(): no frame rated yet")
        if not (isinstance(min_confidence, (int, float)) and 0.0 <= min_confidence <= 1.0):
            raise ValueError(f"`min_confidence` must be a number in [0, 1]; got {min_confidence!r}")
        conf, hw = self._last[0], self._last_hw
        if depth.shape != hw or depth.dtype != np.float32:
            raise ValueError(f"`depth` must be float32 {hw}; got {depth.dtype} {depth.shape}")
        if min_confidence <= 0:
            return None
        below = np.flatnonzero(conf < np.float32(min_confidence))
        if not below.size:
            return None
        step = self.config.step(hw)
        gh, gw = conf.shape
        if step > 1 and gh * step == hw[0] and gw * step == hw[1] and depth.flags.c_contiguous:
            rows, cols = np.divmod(below, gw)
            depth.reshape(gh, step, gw, step)[rows, :, cols, :] = np.float32(np.nan)  # a view: writes depth
            return None
        full = self.full_map(out)
        gate_depth(depth, full, min_confidence, out=depth)
        return full

    def any_below(self, min_confidence: float) -> bool:
        """Whether the last :meth:`compute` has a pixel below ``min_confidence`` (on its grid, which the frame
        map repeats: False = gating that map removes nothing); True before the first frame."""
        return self._last is None or bool((self._last[0] < np.float32(min_confidence)).any())

    def summary(self, min_confidence: float) -> tuple[float, float]:
        """``(mean confidence, share below min_confidence)`` over the valid pixels of the last :meth:`compute`,
        on its grid (each grid pixel stands for ``step x step`` frame pixels): the ``PredictionInfo`` fields
        without a pass over the full frame. ``(nan, nan)`` before the first frame or without valid pixels."""
        if self._last is None:
            return math.nan, math.nan
        conf, valid = self._last
        n = int(np.count_nonzero(valid))
        if n == 0:
            return math.nan, math.nan
        # invalid grid pixels hold confidence 0: they add nothing to the sum, and count as "below" any
        # threshold > 0, so they are taken off that count (= summarize_confidence without a masked copy)
        below = int(np.count_nonzero(conf < np.float32(min_confidence))) - (conf.size - n if min_confidence > 0 else 0)
        return float(conf.sum(dtype=np.float64)) / n, below / n

    @staticmethod
    def _down(a: np.ndarray, step: int) -> np.ndarray:
        if step == 1:
            return a
        # nearest-neighbour subsample (every step-th pixel): NaN-safe, no mixing across depth edges
        return np.ascontiguousarray(a[::step, ::step])

    def _up(self, a: np.ndarray, hw: tuple[int, int], out: np.ndarray | None) -> np.ndarray:
        if a.shape == hw:
            if out is None:
                return a
            np.copyto(out, a)
            return out
        return cv2.resize(a, (hw[1], hw[0]), dst=out, interpolation=cv2.INTER_NEAREST)

    def _edges(self, z: np.ndarray, du: np.ndarray, dv: np.ndarray) -> np.ndarray:
        """Edge cue on the grid: ``s / (s + max(|du|, |dv|) / z)``, minimum-filtered."""
        s = np.float32(self.config.edge_scale)
        x = self._buf("edges", z.shape)
        np.abs(du, out=x)
        np.maximum(x, np.abs(dv, out=self._buf("tmp", z.shape)), out=x)
        x /= z
        x += s
        np.divide(s, x, out=x)
        np.fmax(x, np.float32(0.0), out=x)  # NaN (invalid neighbours) -> 0
        self._spread_edges(x)
        return x

    def _spread_edges(self, x: np.ndarray) -> None:
        """The edge cue's minimum filter of radius ``edge_radius_px`` (in place; replicated border)."""
        r = self.config.edge_radius_px
        if r:
            cv2.erode(x, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * r + 1, 2 * r + 1)), dst=x,
                      borderType=cv2.BORDER_REPLICATE)

    def _differences(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Central differences over 2 px ``z(u+1) - z(u-1)``, ``z(v+1) - z(v-1)`` (one-sided, doubled, at the
        border), shared by the edge and normal cues."""
        du, dv = self._buf("du", z.shape), self._buf("dv", z.shape)
        np.subtract(z[:, 2:], z[:, :-2], out=du[:, 1:-1])
        np.subtract(z[:, 1], z[:, 0], out=du[:, 0])
        np.subtract(z[:, -1], z[:, -2], out=du[:, -1])
        du[:, 0] *= 2
        du[:, -1] *= 2
        np.subtract(z[2:], z[:-2], out=dv[1:-1])
        np.subtract(z[1], z[0], out=dv[0])
        np.subtract(z[-1], z[-2], out=dv[-1])
        dv[0] *= 2
        dv[-1] *= 2
        return du, dv

    def _normals(self, z: np.ndarray, du: np.ndarray, dv: np.ndarray, K: np.ndarray, planes, step: int
                 ) -> np.ndarray:
        """Normal cue on the grid: ``s / (s + 1 - cos)`` with ``cos`` from :func:`_depth_normal_cosine`."""
        m = [self._down(p, step) for p in planes]
        u, v = self._grid_offsets(z.shape, step, K)
        cos = _depth_normal_cosine(z, du, dv, float(K[0, 0]) / step, float(K[1, 1]) / step, u, v, m, self._buf)
        s = np.float32(self.config.normal_scale)
        np.subtract(np.float32(1.0) + s, cos, out=cos)
        np.divide(s, cos, out=cos)
        np.fmax(cos, np.float32(0.0), out=cos)
        return cos

    def _sparse(self, z_full: np.ndarray, sparse_m, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Sparse cue on the grid (raised to ``sparse_weight`` for the geometric mean) and the evidence weight
        (0-1, 0 where no reference point is near).

        Robust to outlier returns (reflections, rain): the relative residuals ``|z - ref| / ref`` are binned
        into cells of half ``residual_window`` x H, each cell keeps the *median* of its residuals (capped
        at :data:`RESIDUAL_CAP`), and the window's value is the count-weighted mean of the cell medians over
        3 x 3 cells (box filters), resized to the grid bilinearly. A minority of wrong returns in a cell
        leaves its median alone; a region where the depth is wrong moves most returns and so the medians."""
        points = sparse_m if isinstance(sparse_m, SparsePoints) else SparsePoints(sparse_m)
        if points.shape != z_full.shape:
            raise ValueError(f"`sparse_m` must have the shape of `depth` {z_full.shape}; got {points.shape}")
        h, w = z_full.shape
        # cells of half a window: enough returns per cell for a median (a quarter had 4 at 120x160: not robust)
        cell = max(1, round(self.config.residual_window * h / 2))  # frame pixels per cell
        cells_hw = (-(-h // cell), -(-w // cell))
        bins, index, rr = points.by_cell(cell)
        size = cells_hw[0] * cells_hw[1]
        z_flat = z_full.reshape(-1)  # a view (a contiguous copy of a strided frame)
        if self._kernel is not None:
            num, den = self._buf("cell_median", (size,)), self._buf("cell_count", (size,))
            self._kernel.cell_medians(z_flat, index, rr, bins, size, RESIDUAL_CAP, num, den)
        else:
            r = np.take(z_flat, index)  # [M] only the reference pixels, no full-frame pass
            r -= rr
            np.abs(r, out=r)
            r /= rr  # [M] relative residual, NaN where the depth is invalid
            ok = np.isfinite(r)
            if not ok.all():
                bins, r = bins[ok], r[ok]
            num, den = _cell_medians(bins, r, size)
        num, den = num.reshape(cells_hw), den.reshape(cells_hw)
        num *= den  # count-weighted: a cell of one return weighs little beside full scan-row cells
        cv2.boxFilter(num, -1, (3, 3), dst=num, normalize=False, borderType=cv2.BORDER_CONSTANT)
        cv2.boxFilter(den, -1, (3, 3), dst=den, normalize=False, borderType=cv2.BORDER_CONSTANT)
        evidence = np.minimum(den, np.float32(1.0))  # [cells] 1 where a reference point is near
        x = np.divide(num, den, out=num)  # 0 / 0 = NaN where no reference point is near
        s = np.float32(self.config.residual_scale)
        x += s
        np.divide(s, x, out=x)
        np.fmin(x, np.float32(1.0), out=x)  # NaN (no evidence) -> 1
        if self.config.sparse_weight != 1.0 and self.config.combine == "geomean":
            np.power(x, np.float32(self.config.sparse_weight), out=x)  # on the coarse cells (~1000): cheap
        size = (grid[1], grid[0])
        return (cv2.resize(x, size, dst=self._buf("sparse", grid), interpolation=cv2.INTER_LINEAR),
                cv2.resize(evidence, size, dst=self._buf("evidence", grid), interpolation=cv2.INTER_LINEAR))


def _cell_medians(bins: np.ndarray, r: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per cell the median of ``r`` (capped at :data:`RESIDUAL_CAP`) and the count: ``([size], [size])``
    float32, median 0 in empty cells. ``bins`` ``[M]`` int cell index, ``r`` ``[M]`` >= 0.

    One sort of ``bin + r / (2 cap)`` (float64: the residual stays inside its cell's unit interval) orders the
    residuals within each cell; numpy has no grouped median. With ``bins`` already ordered (as
    :meth:`SparsePoints.by_cell` gives them) the stable sort (timsort) only merges the short runs of each cell."""
    count = np.bincount(bins, minlength=size)
    median = np.zeros(size, np.float32)
    if bins.size:
        key = np.minimum(r, RESIDUAL_CAP) * (0.5 / RESIDUAL_CAP) + bins
        key.sort(kind="stable")
        cells = np.flatnonzero(count)
        n = count[cells]
        start = np.cumsum(count)[cells] - n
        mid = key[start + (n - 1) // 2] + key[start + n // 2] - 2 * cells  # 2 x (median / (2 cap))
        median[cells] = mid * RESIDUAL_CAP
    return median, count.astype(np.float32)


def _planes(normals, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model normals as three ``[H,W]`` float32 planes (``[3,H,W]``, ``[H,W,3]`` or a sequence of planes)."""
    if isinstance(normals, (tuple, list)):
        planes = tuple(np.asarray(p, np.float32) for p in normals)
    else:
        n = np.asarray(normals, np.float32)
        if n.shape == (3, *hw):
            planes = (n[0], n[1], n[2])
        elif n.shape == (*hw, 3):
            planes = (n[..., 0], n[..., 1], n[..., 2])
        else:
            planes = ()
    if len(planes) != 3 or any(p.shape != hw for p in planes):
        raise ValueError(f"`model_normals` must be [3,H,W], [H,W,3] or three [H,W] planes with (H, W) = {hw}; got "
                         f"{getattr(normals, 'shape', type(normals).__name__)}")
    return planes


def _depth_normal_cosine(z, du, dv, fx: float, fy: float, u, v, m, buf) -> np.ndarray:
    """``[H,W]`` cosine between the normals of depth ``z`` and unit normals ``m`` (three planes).

    The cross product of :func:`~d3_perception.geometry.normals.normals_from_depth` in closed form: with
    ``P = z (u/fx, v/fy, 1)`` (``u, v`` pixel offsets from the principal point) and 2-px central differences
    ``du, dv`` of ``z``, ``dP/dv x dP/du`` is parallel to ``n = (fx du, fy dv, -(2 z + u du + v dv))``, which
    always faces the camera (``n . P = -2 z^2``). Computed on planes: no ``[H,W,3]`` temporaries.
    """
    hw = z.shape
    nz, n, t = buf("nz", hw), buf("n", hw), buf("tmp", hw)
    dot, norm = buf("dot", hw), buf("norm", hw)
    np.multiply(du, u, out=nz)
    nz += np.multiply(dv, v, out=t)
    nz += z
    nz += z  # -n_z
    np.multiply(du, np.float32(fx), out=n)  # n_x
    np.multiply(n, m[0], out=dot)
    np.multiply(n, n, out=norm)
    np.multiply(dv, np.float32(fy), out=n)  # n_y
    dot += np.multiply(n, m[1], out=t)
    norm += np.multiply(n, n, out=t)
    dot -= np.multiply(nz, m[2], out=t)
    norm += np.multiply(nz, nz, out=nz)
    np.sqrt(norm, out=norm)
    return np.divide(dot, norm, out=dot)


def gate_depth(depth: np.ndarray, confidence: np.ndarray, min_confidence: float,
               out: np.ndarray | None = None) -> np.ndarray:
    """``depth`` ``[H,W]`` float32 with NaN where ``confidence < min_confidence`` (the rest unchanged).

    A cloud back-projected from the result leaves those pixels out (NaN points). ``min_confidence`` in [0, 1];
    0 gates nothing. ``out`` may be ``depth`` itself (in place).
    """
    if not (isinstance(min_confidence, (int, float)) and 0.0 <= min_confidence <= 1.0):
        raise ValueError(f"`min_confidence` must be a number in [0, 1]; got {min_confidence!r}")
    d = np.asarray(depth)
    conf = np.asarray(confidence)
    if d.shape != conf.shape or d.ndim != 2:
        raise ValueError(f"`depth` and `confidence` must be [H,W] of one shape; got {d.shape} and {conf.shape}")
    if out is None:
        out = np.array(d, dtype=np.float32)
    elif out is not d:
        np.copyto(out, d)
    if min_confidence > 0:
        np.copyto(out, np.float32(np.nan), where=conf < np.float32(min_confidence))
    return out


def summarize_confidence(confidence: np.ndarray, depth: np.ndarray, min_confidence: float) -> tuple[float, float]:
    """``(mean confidence, share below min_confidence)`` over the valid (finite, > 0) pixels of ``depth``
    (``PredictionInfo``'s fields); ``(nan, nan)`` when no pixel is valid."""
    with np.errstate(invalid="ignore"):
        valid = np.asarray(depth) > 0
    n = int(np.count_nonzero(valid))
    if n == 0:
        return math.nan, math.nan
    conf = np.asarray(confidence)[valid]
    return float(conf.mean(dtype=np.float64)), float(np.count_nonzero(conf < min_confidence)) / n
