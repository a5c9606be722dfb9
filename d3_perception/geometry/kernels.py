"""Compiled kernels for the node's per-pixel work: confidence, the temporal stabiliser and the point cloud.

The numpy code in ``confidence.py`` is the reference: about 60 ufunc calls over the 160x120 grid, each with its
own call overhead and pass through memory (0.55 ms per 640x480 frame standalone, 0.7 ms inside the node, where
#16's budget is 1 ms for confidence, gating and alarms together). These kernels do the same float32 arithmetic
in the same order in two sweeps over the grid and one over the reference's returns (numba: numpy and OpenCV
have no fused per-pixel kernels); the erosion and the powers stay with OpenCV and numpy, which vectorise them.
The maps are bit-identical to the reference's (tested), and the kernels release the GIL.

The same holds for :class:`~d3_perception.geometry.temporal.TemporalStabilizer` (``changed_pixels``,
``still_blend``) and :func:`~d3_perception.geometry.pointcloud.fill_cloud` (``cloud_rows``: back-projection,
range test and every field of the organized cloud written in one pass, instead of planar temporaries merged
by OpenCV; bit-identical bytes).

numba is optional: :func:`load` returns None without it and every caller keeps its numpy path. The first call
compiles (about 2 s), then the machine code is cached on disk (beside this file, or in numba's user cache
where this folder is read-only); :func:`warm_up` does that for a node while it configures.
"""

from __future__ import annotations

import functools
import types

import numpy as np

__all__ = ["load", "warm_up"]


@functools.cache
def load() -> types.SimpleNamespace | None:
    """The compiled kernels (``image_cues``, ``combine``, ``cell_medians``; ``changed_pixels``, ``still_blend``;
    ``cloud_rows``), or None without numba."""
    try:
        import numba
    except ImportError:
        return None
    jit = numba.njit(cache=True, nogil=True, error_model="numpy")  # IEEE division (inf, NaN), as numpy
    return types.SimpleNamespace(image_cues=jit(_image_cues), combine=jit(_combine), cell_medians=jit(_cell_medians),
                                 changed_pixels=jit(_changed_pixels), still_blend=jit(_still_blend),
                                 cloud_rows=jit(_cloud_rows))


def warm_up() -> bool:
    """Compile every kernel now (or load it from numba's cache), for the argument types the node passes, on a
    tiny frame: a node calls this while it configures, so its first camera frame does not wait for it (about
    2 s the first time on a machine, 0.3 s from the cache). False without numba."""
    if load() is None:
        return False
    from d3_perception.geometry.confidence import ConfidenceEstimator, SparsePoints
    from d3_perception.geometry.temporal import TemporalStabilizer

    depth = np.linspace(1.0, 2.0, 64, dtype=np.float32).reshape(8, 8)
    normals = np.zeros((3, 8, 8), np.float32)
    normals[2] = -1.0
    reference = np.full((8, 8), np.nan, np.float32)
    reference[4] = depth[4]
    K = np.array([[8.0, 0.0, 3.5], [0.0, 8.0, 3.5], [0.0, 0.0, 1.0]])
    ConfidenceEstimator().rate(depth, K, normals, SparsePoints(reference))
    stabilizer = TemporalStabilizer()
    grey = np.zeros((8, 8, 3), np.uint8)
    for _ in range(2):  # the kernels run from the second frame on
        stabilizer.update(depth, grey)
    from d3_perception.geometry.pointcloud import fill_cloud

    planes = (normals[0], normals[1], normals[2])
    for stride in (1, 2):  # contiguous and strided views compile separately
        for colour, with_normals in ((grey, planes), (grey, None), (None, planes), (None, None)):
            fill_cloud(depth, K, colour, with_normals, stride=stride, min_range_m=0.1, max_range_m=20.0)
    return True


def _image_cues(z, use_edges, edge_scale, m0, m1, m2, use_normals, fx, fy, u, v, normal_scale, edges, normals):
    """The edge cue (before its minimum filter) into ``edges`` and the normal cue into ``normals``, ``[gh,gw]``,
    from the grid depth ``z`` and the grid planes ``m0, m1, m2`` of the model normals (all contiguous, both
    sides >= 2; the arrays of an unused cue are not read).

    The reference's arithmetic per pixel: 2-px central differences (one-sided and doubled at the border), the
    edge cue ``s / (s + max(|du|, |dv|) / z)`` with NaN -> 0, the normal cue ``s / (1 + s - cos)`` (NaN -> 0)
    with ``cos`` from :func:`~d3_perception.geometry.confidence._depth_normal_cosine`'s closed form. The inner
    loops have no branches so they vectorise; every constant is float32 so nothing widens to float64."""
    gh, gw = z.shape
    zero = np.float32(0.0)
    two = np.float32(2.0)
    nan = np.float32(np.nan)
    s_edge = np.float32(edge_scale)
    s_norm = np.float32(normal_scale)
    one_plus_s = np.float32(1.0) + s_norm
    fx32 = np.float32(fx)
    fy32 = np.float32(fy)
    du = np.empty(gw, np.float32)
    for i in range(gh):
        up = i - 1 if i > 0 else 0
        dn = i + 1 if i < gh - 1 else gh - 1
        fac = two if i == 0 or i == gh - 1 else np.float32(1.0)  # x 1 is exact: the reference's interior rows
        for j in range(1, gw - 1):
            du[j] = z[i, j + 1] - z[i, j - 1]
        du[0] = (z[i, 1] - z[i, 0]) * two
        du[gw - 1] = (z[i, gw - 1] - z[i, gw - 2]) * two
        vi = v[i] if use_normals else zero
        for j in range(gw):
            zz = z[i, j]
            dx = du[j]
            dy = (z[dn, j] - z[up, j]) * fac
            if use_edges:
                a = abs(dx)
                b = abs(dy)
                x = a if a >= b else b
                x = nan if (a != a) | (b != b) else x  # np.maximum propagates NaN
                x = s_edge / (x / zz + s_edge)
                edges[i, j] = x if x > zero else zero  # np.fmax(x, 0): NaN -> 0
            if use_normals:
                nz = dx * u[j]
                nz += dy * vi
                nz += zz
                nz += zz
                n = dx * fx32
                dot = n * m0[i, j]
                norm = n * n
                n = dy * fy32
                dot += n * m1[i, j]
                norm += n * n
                dot -= nz * m2[i, j]
                norm += nz * nz
                cue = s_norm / (one_plus_s - dot / np.sqrt(norm))
                normals[i, j] = cue if cue > zero else zero


def _combine(z, edges, use_edges, normals, use_normals, sparse_cue, use_sparse, evidence, use_evidence, combine_min,
             images, sparse_weight, conf, valid):
    """The cues' product (or minimum) into ``conf``, 0 where ``z`` is invalid (``valid``: ``z > 0``), in the
    reference's order (edges, normals, sparse). The geometric mean's exponent and the clamp to 1 are left to
    the caller (np.power is vectorised; 0 ** exponent = 0, so zeroing first changes nothing). With
    ``use_evidence`` the per-pixel exponent ``1 / (evidence * sparse_weight + images)`` goes into ``evidence``
    (in place; ``images`` = the number of image cues)."""
    gh, gw = z.shape
    one = np.float32(1.0)
    zero = np.float32(0.0)
    w_sparse = np.float32(sparse_weight)
    w_images = np.float32(images)
    for i in range(gh):
        for j in range(gw):
            x = one
            first = True
            if use_edges:
                x = edges[i, j]
                first = False
            if use_normals:
                y = normals[i, j]
                x = y if first else ((x if x <= y else y) if combine_min else x * y)
                first = False
            if use_sparse:
                y = sparse_cue[i, j]
                x = y if first else ((x if x <= y else y) if combine_min else x * y)
            if use_evidence:
                w = evidence[i, j] * w_sparse
                w += w_images
                evidence[i, j] = one / w
            ok = z[i, j] > zero
            valid[i, j] = ok
            conf[i, j] = x if ok else zero


def _cell_medians(z_flat, index, values, bins, size, cap, median, count):
    """Per cell the median relative residual ``|z - ref| / ref`` (each capped at ``cap``; invalid depth skipped)
    and the number of returns, into ``median`` / ``count`` ``[size]`` float32 (0 in empty cells). ``index``,
    ``values``, ``bins`` ``[M]`` are :meth:`~d3_perception.geometry.confidence.SparsePoints.by_cell`'s, ordered
    by cell, so each cell is one run."""
    median[:] = 0.0
    count[:] = 0.0
    m = bins.size
    run = np.empty(m, np.float64)
    start = 0
    while start < m:
        cell = bins[start]
        n = 0
        k = start
        while k < m and bins[k] == cell:
            ref = values[k]
            r = abs(z_flat[index[k]] - ref) / ref  # float32, as the reference
            if r == r and abs(r) != np.inf:
                run[n] = min(np.float64(r), cap)
                n += 1
            k += 1
        if n:
            # quickselect of the upper median in place (Hoare partitions; O(n), no allocation): afterwards
            # run[:hi] holds the values <= run[hi], so the lower median of an even run is their maximum
            hi = n // 2
            lo, top = 0, n - 1
            while lo < top:
                pivot = run[(lo + top) // 2]
                a, b = lo, top
                while a <= b:
                    while run[a] < pivot:
                        a += 1
                    while run[b] > pivot:
                        b -= 1
                    if a <= b:
                        run[a], run[b] = run[b], run[a]
                        a += 1
                        b -= 1
                if hi <= b:
                    top = b
                elif hi >= a:
                    lo = a
                else:
                    break
            upper = run[hi]
            lower = upper
            if n % 2 == 0:
                lower = run[0]
                for q in range(1, hi):
                    if run[q] > lower:
                        lower = run[q]
            median[cell] = np.float32((lower + upper) * 0.5)
            count[cell] = n
        start = k


def _changed_pixels(grey, prev_grey, threshold):
    """How many pixels of the blurred grey images ``[N]`` float32 changed by more than ``threshold`` (float32,
    as numpy compares a float32 array with a Python float)."""
    t = np.float32(threshold)
    n = 0
    for k in range(grey.size):
        n += abs(grey[k] - prev_grey[k]) > t
    return n


def _still_blend(depth, prev, raw, grey, prev_grey, threshold, max_change, blend, out, flicker):
    """The stabiliser's still frame, in one branch-free sweep over ``[N]`` float32 arrays: a pixel is still where
    its grey value changed by at most ``threshold``, its depth by at most ``max_change`` x depth and the previous
    output is valid; still pixels get ``blend * prev + (1 - blend) * depth`` in ``out`` (when ``blend`` > 0), the
    rest ``depth``. ``prev`` and ``raw`` (the previous output and input, the state) are then overwritten with
    ``out`` and ``depth``; ``flicker`` gets ``|depth - raw| / depth`` on the still pixels where that is finite,
    0 elsewhere (the caller sums it: a float64 sum in one chain would not vectorise). Returns (valid pixels,
    still pixels, pixels in ``flicker``): the counts of
    :meth:`~d3_perception.geometry.temporal.TemporalStabilizer.update`."""
    t = np.float32(threshold)
    c = np.float32(max_change)
    a = np.float32(blend)
    b = np.float32(1.0) - a
    zero = np.float32(0.0)
    inf = np.float32(np.inf)
    mix = blend > 0
    valid = 0
    still_count = 0
    used = 0
    for k in range(depth.size):
        d = depth[k]
        p = prev[k]
        still = (abs(d - p) <= c * d) & (p > zero) & (abs(grey[k] - prev_grey[k]) <= t)  # NaN compares False
        valid += d > zero
        still_count += still
        rel = abs(d - raw[k]) / d
        use = still & (abs(rel) < inf)  # finite (NaN fails too)
        used += use
        flicker[k] = rel if use else zero
        value = p * a + d * b if still & mix else d
        out[k] = value
        prev[k] = value
        raw[k] = d
    return valid, still_count, used


def _cloud_rows(d, rx, ry, n2, min2, max2, rgb, use_rgb, n0, n1, nz, use_normals, r0, r1, block, bits):
    """Rows ``r0:r1`` of the organized cloud ``block`` ``[h,w,k]`` float32 (``bits``: the same memory as uint32),
    as :func:`~d3_perception.geometry.pointcloud.fill_cloud`'s numpy code writes them: a point is kept where
    ``d > 0`` and ``min2 <= d^2 |ray|^2 <= max2`` (squared range, float32; NaN fails), else x, y, z (and its
    normals) are NaN; x = rx d, y = ry d, z = d; slot 3 the packed ``0x00RRGGBB`` colour (``use_rgb``) or 0;
    with normals (k = 8) slots 4-6 ``n0, n1, nz`` and slot 7 0. ``d, rx, ry, n2`` ``[h,w]`` float32, ``rgb``
    ``[h,w,3]`` uint8, normals ``[h,w]`` float32 (unused ones are not read). Returns whether every point of the
    rows was kept."""
    w = d.shape[1]
    k = block.shape[2]
    zero = np.float32(0.0)
    nan = np.float32(np.nan)
    all_kept = True
    for r in range(r0, r1):
        for c in range(w):
            z = d[r, c]
            r2 = z * z
            r2 *= n2[r, c]
            keep = (z > zero) & (r2 >= min2) & (r2 <= max2)
            all_kept &= keep
            zk = z if keep else nan
            block[r, c, 0] = rx[r, c] * zk
            block[r, c, 1] = ry[r, c] * zk
            block[r, c, 2] = zk
            if use_rgb:
                bits[r, c, 3] = (np.uint32(rgb[r, c, 0]) << 16) | (np.uint32(rgb[r, c, 1]) << 8) | np.uint32(rgb[r, c, 2])
            else:
                block[r, c, 3] = zero
            if k == 8:
                if use_normals:
                    block[r, c, 4] = n0[r, c] if keep else nan
                    block[r, c, 5] = n1[r, c] if keep else nan
                    block[r, c, 6] = nz[r, c] if keep else nan
                else:
                    block[r, c, 4] = zero
                    block[r, c, 5] = zero
                    block[r, c, 6] = zero
                block[r, c, 7] = zero
    return all_kept
