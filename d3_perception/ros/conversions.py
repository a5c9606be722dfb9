"""ROS message <-> numpy for the node: Image, CompressedImage, PointCloud2, CameraInfo.

cv_bridge from PyPI breaks on numpy 2 and ``sensor_msgs_py`` (point_cloud2) is not on the package
registries, so these small conversions live here; Image fields go through :mod:`d3_perception.image_codec`
(tested against ``rosbags.image`` as an independent reference). Clouds are packed from structured arrays
with one ``tobytes()``: no per-point Python loop.
"""

from __future__ import annotations

import array
import struct

import cv2
import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField

from d3_perception.geometry.intrinsics import check_intrinsics, scale_intrinsics
from d3_perception.image_codec import COLOR_ENCODINGS, ENCODINGS, ImageDecodeError, decode_image, encode_image

__all__ = [
    "COLOR_ENCODINGS",
    "BufferPool",
    "ENCODINGS",
    "ImageDecodeError",
    "camera_info_k",
    "cloud_to_msg",
    "compressed_size",
    "compressed_to_rgb",
    "info_to_image_k",
    "msg_to_cloud",
    "msg_to_numpy",
    "new_message",
    "numpy_to_msg",
    "scaled_camera_info",
]


_NP_TO_FIELD = {
    np.dtype("int8"): PointField.INT8, np.dtype("uint8"): PointField.UINT8,
    np.dtype("int16"): PointField.INT16, np.dtype("uint16"): PointField.UINT16,
    np.dtype("int32"): PointField.INT32, np.dtype("uint32"): PointField.UINT32,
    np.dtype("float32"): PointField.FLOAT32, np.dtype("float64"): PointField.FLOAT64,
}
_FIELD_TO_NP = {v: k for k, v in _NP_TO_FIELD.items()}


class BufferPool:
    """Message payload buffers reused across frames, one per key (output topic).

    rclpy serializes a message inside ``publish()``, so a single publishing thread can refill the same
    buffer for the next frame: no 10 MB allocation and page faults per cloud. Not thread-safe: one owner.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, array.array] = {}

    def get(self, key: str, nbytes: int) -> array.array:
        buf = self._buffers.get(key)
        if buf is None or len(buf) != nbytes:
            buf = array.array("B", bytes(nbytes))
            self._buffers[key] = buf
        return buf

    def float32_block(self, key: str, shape: tuple[int, ...]) -> tuple[array.array, np.ndarray]:
        """A buffer and a writable float32 view of it with ``shape`` (for :func:`make_cloud` ``out=``)."""
        return self.view(key, shape, np.float32)

    def view(self, key: str, shape: tuple[int, ...], dtype) -> tuple[array.array, np.ndarray]:
        """The buffer ``key`` sized for ``shape`` x ``dtype`` and a writable numpy view of it.

        Compute an output straight into the view, then hand it to :func:`numpy_to_msg` with the same
        ``pool`` and ``key``: the message then carries the buffer without any copy.
        """
        dt = np.dtype(dtype)
        buf = self.get(key, int(np.prod(shape)) * dt.itemsize)
        return buf, np.frombuffer(buf, dtype=dt).reshape(shape)


def new_message(cls):
    """``cls()`` whose ``uint8[]`` setters keep an ``array.array('B')`` as is.

    The generated setters copy it (``array.array('B', value)``, ~1 ms per 10 MB cloud) unless the message
    checks its fields (rosidl_generator_py ``check_fields``, off unless ``ROS_PYTHON_CHECK_FIELDS=1``);
    with an older rosidl that has no such argument this is plain ``cls()``. Every other field then gets
    the generated type checks: set plain ``int``/``float``/``str`` values.
    """
    try:
        return cls(check_fields=True)
    except TypeError:
        return cls()


def msg_to_numpy(msg: Image, max_pixels: int | None = None) -> np.ndarray:
    """sensor_msgs/Image -> ``[H,W]`` or ``[H,W,C]`` array in native byte order (step padding and
    ``is_bigendian`` handled). Raises :class:`ImageDecodeError` naming the broken field."""
    return decode_image(msg, max_pixels=max_pixels)


def numpy_to_msg(array: np.ndarray, encoding: str, header=None, pool: BufferPool | None = None,
                 key: str = "") -> Image:
    """``[H,W]``/``[H,W,C]`` array -> sensor_msgs/Image (little-endian, unpadded) with ``header`` copied.

    With ``pool`` the payload is copied into the pool's buffer ``key`` (reused across frames).
    """
    info = ENCODINGS.get(encoding)
    arr = np.asarray(array)
    if info is None or arr.dtype.newbyteorder("=") != info.dtype.newbyteorder("=") or arr.ndim not in (2, 3):
        h, w, step, data = encode_image(arr, encoding)  # validates, converts, raises with the reason
        buf = data
    else:
        arr = np.ascontiguousarray(arr, dtype=info.dtype)
        if (arr.shape[2] if arr.ndim == 3 else 1) != info.channels:
            encode_image(arr, encoding)  # raises with the reason
        h, w = arr.shape[:2]
        step, buf = w * info.channels * info.dtype.itemsize, arr
    msg = new_message(Image)
    if header is not None:
        msg.header = header
    msg.height, msg.width, msg.step, msg.encoding, msg.is_bigendian = int(h), int(w), int(step), encoding, 0
    if pool is not None and not isinstance(buf, bytes):
        data = pool.get(key or encoding, buf.nbytes)
        dst = np.frombuffer(data, dtype=np.uint8)
        src = np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
        if not (src.ctypes.data == dst.ctypes.data):  # computed in the pool's buffer already: no copy
            dst[:] = src
        msg.data = data
    else:
        msg.data = _byte_array(buf)
    return msg


def _byte_array(buf) -> array.array:
    # One copy from the numpy buffer into the message's array.array (bytes -> array would copy twice).
    out = array.array("B")
    out.frombytes(memoryview(buf).cast("B") if not isinstance(buf, bytes) else buf)
    return out


def compressed_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """``(height, width)`` read from a JPEG or PNG header without decoding, or None if not found.

    Hand-written because OpenCV has no header-only query in Python; lets the node refuse huge images
    before allocating them.
    """
    buf = bytes(data[:65536]) if len(data) > 65536 else bytes(data)
    if buf[:8] == b"\x89PNG\r\n\x1a\n" and len(buf) >= 24:
        w, h = struct.unpack(">II", buf[16:24])
        return h, w
    if buf[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(buf):
            if buf[i] != 0xFF:
                i += 1
                continue
            marker = buf[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                i += 1 if marker == 0xFF else 2
                continue
            seg_len = struct.unpack(">H", buf[i + 2:i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", buf[i + 5:i + 9])
                return h, w
            i += 2 + seg_len
    return None


def compressed_to_rgb(msg: CompressedImage, max_pixels: int | None = None) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg/png) -> ``[H,W,3]`` uint8 RGB via OpenCV.

    Raises :class:`ImageDecodeError` for empty data, images above ``max_pixels`` (checked on the header,
    before decoding) and data OpenCV cannot decode.
    """
    data = msg.data
    n = len(data)
    if n == 0:
        raise ImageDecodeError("`data` of the CompressedImage is empty")
    fmt = str(msg.format).split(";")[0].strip().lower()
    if fmt and any(t in str(msg.format) for t in ("compressedDepth",)):
        raise ImageDecodeError(f"`format` {msg.format!r} is a compressedDepth image, not a colour image")
    raw = data if isinstance(data, bytes | bytearray) else bytes(data)
    size = compressed_size(raw)
    if max_pixels is not None and size is not None and size[0] * size[1] > max_pixels:
        raise ImageDecodeError(f"compressed image {size[1]}x{size[0]} exceeds the limit of {max_pixels} pixels")
    img = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageDecodeError(f"OpenCV could not decode the CompressedImage ({n} bytes, format {msg.format!r})")
    if max_pixels is not None and img.shape[0] * img.shape[1] > max_pixels:
        raise ImageDecodeError(f"compressed image {img.shape[1]}x{img.shape[0]} exceeds the limit of "
                               f"{max_pixels} pixels")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def cloud_to_msg(cloud: np.ndarray, header=None, buffer: array.array | None = None,
                 is_dense: bool | None = None) -> PointCloud2:
    """``(h, w)`` structured array -> organized PointCloud2 (fields/offsets from the dtype).

    ``is_dense`` is True only when no ``x`` is NaN; pass it when already known (e.g. from
    :func:`~d3_perception.geometry.pointcloud.fill_cloud`) to skip reading ``x``. If ``cloud`` was built in
    ``buffer`` (see :meth:`BufferPool.float32_block`), the buffer becomes the payload without a copy;
    otherwise one copy.
    """
    if cloud.dtype.fields is None or cloud.ndim != 2:
        raise ValueError(f"`cloud` must be an (h, w) structured array; got {cloud.dtype} {cloud.shape}")
    fields = []
    for name, (dt, offset) in sorted(cloud.dtype.fields.items(), key=lambda kv: kv[1][1]):
        base = dt.newbyteorder("=") if dt.byteorder == "<" else dt
        if base not in _NP_TO_FIELD:
            raise ValueError(f"`cloud` field {name!r} has unsupported dtype {dt}")
        fields.append(PointField(name=name, offset=offset, datatype=_NP_TO_FIELD[base], count=1))
    msg = new_message(PointCloud2)
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(cloud.shape[0]), int(cloud.shape[1])
    msg.fields = fields
    msg.is_bigendian = False
    msg.point_step = int(cloud.dtype.itemsize)
    msg.row_step = msg.point_step * msg.width
    if is_dense is None:
        is_dense = "x" in cloud.dtype.names and not np.isnan(cloud["x"]).any()
    msg.is_dense = bool(is_dense)
    if buffer is not None and len(buffer) == cloud.nbytes and np.shares_memory(
            np.frombuffer(buffer, dtype=np.uint8), cloud.view(np.uint8) if cloud.flags.c_contiguous else cloud):
        msg.data = buffer
    else:
        msg.data = _byte_array(np.ascontiguousarray(cloud).view(np.uint8))
    return msg


def msg_to_cloud(msg: PointCloud2) -> np.ndarray:
    """PointCloud2 -> ``(height, width)`` structured array (a view of a copy of the data)."""
    dtype = np.dtype({
        "names": [f.name for f in msg.fields],
        "formats": [_FIELD_TO_NP[f.datatype].newbyteorder(">" if msg.is_bigendian else "<") for f in msg.fields],
        "offsets": [f.offset for f in msg.fields],
        "itemsize": msg.point_step,
    })
    raw = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(msg.height, msg.row_step)
    return raw[:, : msg.width * msg.point_step].copy().view(dtype).reshape(msg.height, msg.width)


def camera_info_k(msg: CameraInfo) -> np.ndarray:
    """``K`` ``[3,3]`` float64 of a CameraInfo; raises ``ValueError`` for zero/NaN intrinsics."""
    return check_intrinsics(np.asarray(msg.k, dtype=np.float64))


def scaled_camera_info(info: CameraInfo | None, K: np.ndarray, hw: tuple[int, int], header) -> CameraInfo:
    """CameraInfo for an ``hw`` = (H, W) image with intrinsics ``K`` (already scaled to ``hw``).

    Keeps distortion model, D and R of ``info``; P gets K with the original Tx/Ty scaled by fx'/fx.
    ROI and binning are reset (they describe the original image).
    """
    out = CameraInfo()
    out.header = header
    out.height, out.width = int(hw[0]), int(hw[1])
    out.k = [float(v) for v in np.asarray(K, dtype=np.float64).ravel()]
    P = np.zeros((3, 4))
    P[:, :3] = K
    if info is not None:
        out.distortion_model = info.distortion_model
        out.d = list(info.d)
        out.r = list(info.r)
        p_in = np.asarray(info.p, dtype=np.float64).reshape(3, 4)
        if p_in[0, 0] > 0:
            sx, sy = K[0, 0] / info.k[0] if info.k[0] > 0 else 1.0, K[1, 1] / info.k[4] if info.k[4] > 0 else 1.0
            P[0, 3], P[1, 3] = p_in[0, 3] * sx, p_in[1, 3] * sy
    else:
        out.distortion_model = "plumb_bob"
        out.d = [0.0] * 5
        out.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    out.p = [float(v) for v in P.ravel()]
    return out


def info_to_image_k(info: CameraInfo, image_hw: tuple[int, int]) -> tuple[np.ndarray, bool]:
    """``K`` of ``info`` scaled to an image of size ``image_hw``; second value: True if sizes differed.

    camera_info with width/height 0 is taken to match the image. A different size is accepted when the
    aspect ratio agrees within 1 % (a resized/binned stream); otherwise ``ValueError``.
    """
    K = camera_info_k(info)
    ih, iw = int(info.height), int(info.width)
    h, w = image_hw
    if ih <= 0 or iw <= 0 or (ih, iw) == (h, w):
        return K, False
    if abs((iw / ih) / (w / h) - 1.0) > 0.01:
        raise ValueError(f"camera_info size {iw}x{ih} must match the image {w}x{h} or have its aspect ratio")
    return scale_intrinsics(K, (ih, iw), (h, w)), True

