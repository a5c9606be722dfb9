"""PLY point-cloud writer (binary little-endian or ASCII).

Hand-written because none of the project's libraries (numpy, OpenCV, matplotlib) writes PLY with
per-point colours and normals; the format is a text header plus one structured-array dump.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from d3_perception.io_utils import atomic_write_bytes

__all__ = ["read_ply", "write_ply"]


def write_ply(path: str | os.PathLike, points: np.ndarray, colors: np.ndarray | None = None,
              normals: np.ndarray | None = None, *, binary: bool = True) -> Path:
    """Write ``points`` ``[N,3]`` (metres, any frame) with optional ``colors`` ``[N,3]`` uint8 RGB and
    ``normals`` ``[N,3]`` float. Rows with a non-finite point are dropped. Written atomically.

    Returns the path. Raises ``ValueError`` on shape/dtype mismatches.
    """
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"`points` must be [N,3]; got shape {pts.shape}")
    n = pts.shape[0]
    if colors is not None:
        colors = np.asarray(colors)
        if colors.shape != (n, 3) or colors.dtype != np.uint8:
            raise ValueError(f"`colors` must be uint8 [N,3] with N={n}; got {colors.dtype} {colors.shape}")
    if normals is not None:
        normals = np.asarray(normals)
        if normals.shape != (n, 3):
            raise ValueError(f"`normals` must be [N,3] with N={n}; got shape {normals.shape}")
    keep = np.isfinite(pts).all(axis=1)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if normals is not None:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    rows = np.empty(int(keep.sum()), dtype=np.dtype(fields))
    rows["x"], rows["y"], rows["z"] = (pts[keep].astype(np.float32).T)
    if normals is not None:
        nrm = np.nan_to_num(normals[keep].astype(np.float32))
        rows["nx"], rows["ny"], rows["nz"] = nrm.T
    if colors is not None:
        rows["red"], rows["green"], rows["blue"] = colors[keep].T
    ply_types = {"<f4": "float", "u1": "uchar"}
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0",
              "comment written by d3_perception", f"element vertex {rows.shape[0]}"]
    header += [f"property {ply_types[t]} {name}" for name, t in fields]
    header.append("end_header")
    head = ("\n".join(header) + "\n").encode("ascii")
    if binary:
        body = rows.tobytes()
    else:
        lines = (" ".join(f"{v:.6g}" if isinstance(v, (float, np.floating)) else str(int(v)) for v in row)
                 for row in rows.tolist())
        body = ("\n".join(lines) + ("\n" if rows.shape[0] else "")).encode("ascii")
    path = Path(path)
    atomic_write_bytes(path, head + body)
    return path


def read_ply(path: str | os.PathLike) -> np.ndarray:
    """Read a PLY written by :func:`write_ply` back into a structured array (for tests and tools)."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    fmt = header[1].split()[1]
    count = next(int(line.split()[2]) for line in header if line.startswith("element vertex"))
    types = {"float": "<f4", "uchar": "u1"}
    fields = [(line.split()[2], types[line.split()[1]]) for line in header if line.startswith("property")]
    dtype = np.dtype(fields)
    if fmt == "binary_little_endian":
        return np.frombuffer(data[end:], dtype=dtype, count=count)
    table = np.loadtxt(data[end:].decode("ascii").splitlines(), ndmin=2) if count else np.zeros((0, len(fields)))
    out = np.empty(count, dtype=dtype)
    for i, (name, _) in enumerate(fields):
        out[name] = table[:, i]
    return out
