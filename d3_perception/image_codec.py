"""sensor_msgs/Image <-> numpy without ROS.

The functions take any object with the fields of ``sensor_msgs/Image`` (``height``, ``width``,
``encoding``, ``is_bigendian``, ``step``, ``data``), so the same code serves rclpy messages in the node
and ``rosbags`` messages in the bag tools. cv_bridge from PyPI breaks on numpy 2 and is not installable
next to these wheels, so the (small) conversion lives here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "COLOR_ENCODINGS",
    "DEPTH_ENCODINGS",
    "ENCODINGS",
    "ImageDecodeError",
    "decode_depth_m",
    "decode_image",
    "encode_image",
    "to_rgb8",
]


@dataclass(frozen=True)
class EncodingInfo:
    dtype: np.dtype  # element type, little-endian
    channels: int


ENCODINGS: dict[str, EncodingInfo] = {
    "rgb8": EncodingInfo(np.dtype(np.uint8), 3),
    "bgr8": EncodingInfo(np.dtype(np.uint8), 3),
    "rgba8": EncodingInfo(np.dtype(np.uint8), 4),
    "bgra8": EncodingInfo(np.dtype(np.uint8), 4),
    "mono8": EncodingInfo(np.dtype(np.uint8), 1),
    "8UC1": EncodingInfo(np.dtype(np.uint8), 1),
    "8UC3": EncodingInfo(np.dtype(np.uint8), 3),
    "mono16": EncodingInfo(np.dtype("<u2"), 1),
    "16UC1": EncodingInfo(np.dtype("<u2"), 1),
    "32FC1": EncodingInfo(np.dtype("<f4"), 1),
    "32FC3": EncodingInfo(np.dtype("<f4"), 3),
    # YUV 4:2:2 packed (2 bytes per pixel); decoded to rgb8 by to_rgb8.
    "yuv422": EncodingInfo(np.dtype(np.uint8), 2),
    "uyvy": EncodingInfo(np.dtype(np.uint8), 2),
    "yuv422_yuy2": EncodingInfo(np.dtype(np.uint8), 2),
}


# The one list of camera-image encodings (everything :func:`to_rgb8` turns into the model's RGB input), used by
# the node and by the bag reader. mono16 is also a depth encoding: a bag reader guessing topics takes it as depth.
COLOR_ENCODINGS: tuple[str, ...] = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "8UC3", "8UC1",
                                    "yuv422", "uyvy", "yuv422_yuy2")
# Depth images: 16UC1/mono16 in millimetres (0 = invalid), 32FC1 in metres (NaN/<= 0 = invalid).
DEPTH_ENCODINGS: tuple[str, ...] = ("16UC1", "mono16", "32FC1")


class ImageDecodeError(ValueError):
    """A message whose fields do not describe a valid image; the text says which rule failed."""


def decode_image(msg, max_pixels: int | None = None) -> np.ndarray:
    """Image message -> numpy array ``[H,W]`` or ``[H,W,C]`` in native byte order (a copy).

    Handles row padding (``step`` > width * bytes per pixel) and ``is_bigendian``. Raises
    :class:`ImageDecodeError` naming the field for unknown encodings, zero sizes, ``step`` shorter
    than a row, data shorter or longer than ``step * height`` and images above ``max_pixels``.
    """
    enc = str(msg.encoding)
    info = ENCODINGS.get(enc)
    if info is None:
        raise ImageDecodeError(f"unsupported encoding `{enc}`; supported: {', '.join(sorted(ENCODINGS))}")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"image size must be positive; got {width}x{height}")
    if max_pixels is not None and height * width > max_pixels:
        raise ImageDecodeError(f"image {width}x{height} exceeds the limit of {max_pixels} pixels")
    row_bytes = width * info.channels * info.dtype.itemsize
    if step < row_bytes:
        raise ImageDecodeError(f"`step` {step} is shorter than one row of {width} {enc} pixels ({row_bytes} bytes)")
    data = msg.data
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8).ravel()
    if buf.size != step * height:
        raise ImageDecodeError(f"`data` has {buf.size} bytes; expected step*height = {step}*{height} = {step * height}")
    rows = buf.reshape(height, step)[:, :row_bytes]
    dtype = info.dtype.newbyteorder(">") if (msg.is_bigendian and info.dtype.itemsize > 1) else info.dtype
    arr = np.ascontiguousarray(rows).view(dtype).reshape(height, width, info.channels)
    arr = arr.astype(info.dtype.newbyteorder("="), copy=True)
    return arr[:, :, 0] if info.channels == 1 else arr


def encode_image(array: np.ndarray, encoding: str) -> tuple[int, int, int, bytes]:
    """numpy ``[H,W]``/``[H,W,C]`` -> ``(height, width, step, data)`` for ``encoding`` (little-endian, no padding)."""
    info = ENCODINGS.get(encoding)
    if info is None:
        raise ValueError(f"unsupported encoding `{encoding}`")
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] != info.channels:
        raise ValueError(f"`array` for {encoding} must be [H,W,{info.channels}]; got {array.shape}")
    arr = np.ascontiguousarray(arr, dtype=info.dtype)
    h, w = arr.shape[:2]
    return h, w, w * info.channels * info.dtype.itemsize, arr.tobytes()


def to_rgb8(image: np.ndarray, encoding: str) -> np.ndarray:
    """A decoded camera image -> ``[H,W,3]`` uint8 RGB (the model's input); raises for depth encodings."""
    import cv2

    if encoding == "rgb8" or encoding == "8UC3":
        return image
    if encoding == "bgr8":
        return image[:, :, ::-1].copy()
    if encoding == "rgba8":
        return image[:, :, :3].copy()
    if encoding == "bgra8":
        return image[:, :, 2::-1].copy()
    if encoding in ("mono8", "8UC1"):
        return np.repeat(image[:, :, None], 3, axis=2)
    if encoding == "mono16":
        scaled = (image.astype(np.float32) / 257.0).round().astype(np.uint8)
        return np.repeat(scaled[:, :, None], 3, axis=2)
    if encoding in ("yuv422", "uyvy"):
        return cv2.cvtColor(image, cv2.COLOR_YUV2RGB_UYVY)
    if encoding == "yuv422_yuy2":
        return cv2.cvtColor(image, cv2.COLOR_YUV2RGB_YUY2)
    raise ValueError(f"encoding `{encoding}` is not a colour camera encoding")


def decode_depth_m(msg, max_pixels: int | None = None, name: str = "depth") -> np.ndarray:
    """Depth Image message (:data:`DEPTH_ENCODINGS`) -> ``[H,W]`` float32 metres, NaN = invalid.

    Raises :class:`ImageDecodeError` (naming ``name``) for another encoding or a malformed message.
    """
    from d3_perception.geometry.units import depth_to_m

    if str(msg.encoding) not in DEPTH_ENCODINGS:
        raise ImageDecodeError(f"`{name}` must be 16UC1/mono16 (mm) or 32FC1 (m); got {msg.encoding}")
    return depth_to_m(decode_image(msg, max_pixels), inplace=True)  # decode_image returned a copy
