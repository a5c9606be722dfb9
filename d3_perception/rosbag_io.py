"""Write and read ROS 2 bags (MCAP or sqlite3) with ``rosbags``: no ROS installation needed.

Writing: :class:`BagWriter` turns numpy arrays into ``sensor_msgs`` Image / CompressedImage / CameraInfo /
PointCloud2 messages (``rosbags`` typestore of ROS 2 Kilted, rosbag2 metadata version 9) and records
them at their header stamp. Reading: :func:`read_messages` yields ``(topic, msgtype, timestamp_ns, msg)``
with ``rosbags`` message objects that :func:`d3_perception.image_codec.decode_image` accepts directly.

>>> with BagWriter("out_bag", storage="mcap") as bag:
...     bag.write_image("/camera/image", rgb, "rgb8", stamp_ns, "camera_color_optical_frame")
...     bag.write_camera_info("/camera/camera_info", K, rgb.shape[:2], stamp_ns, "camera_color_optical_frame")
>>> for topic, msgtype, t_ns, msg in read_messages("out_bag"):
...     ...
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from d3_perception.image_codec import encode_image

__all__ = [
    "IMAGE_TYPE",
    "COMPRESSED_TYPE",
    "CAMERA_INFO_TYPE",
    "POINTCLOUD2_TYPE",
    "STORAGE_FORMATS",
    "BagWriter",
    "bag_summary",
    "camera_info_msg",
    "camera_info_to_K",
    "cloud_from_msg",
    "decode_compressed",
    "read_messages",
    "stamp_to_ns",
    "typestore",
]

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
POINTCLOUD2_TYPE = "sensor_msgs/msg/PointCloud2"
STORAGE_FORMATS = ("mcap", "sqlite3")

_TYPESTORE = None
# numpy dtype -> sensor_msgs/PointField datatype constant
_POINTFIELD_TYPES = {"i1": 1, "u1": 2, "i2": 3, "u2": 4, "i4": 5, "u4": 6, "f4": 7, "f8": 8}


def typestore():
    """The ``rosbags`` typestore of ROS 2 Kilted (built once)."""
    global _TYPESTORE
    if _TYPESTORE is None:
        from rosbags.typesys import Stores, get_typestore

        _TYPESTORE = get_typestore(Stores.ROS2_KILTED)
    return _TYPESTORE


def _check_stamp(stamp_ns) -> int:
    if isinstance(stamp_ns, bool) or not isinstance(stamp_ns, (int, np.integer)) or stamp_ns < 0:
        raise ValueError(f"`stamp_ns` must be an integer >= 0 (nanoseconds); got {stamp_ns!r}")
    return int(stamp_ns)


def _header(stamp_ns: int, frame_id: str):
    ts = typestore()
    Time = ts.types["builtin_interfaces/msg/Time"]
    Header = ts.types["std_msgs/msg/Header"]
    return Header(stamp=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000), frame_id=frame_id)


def stamp_to_ns(header) -> int:
    """``std_msgs/Header`` (rosbags or rclpy) -> integer nanoseconds."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


class BagWriter:
    """A ROS 2 bag being written. Use as a context manager; topics are registered on first use.

    ``storage``: ``mcap`` (default, what ``ros2 bag record`` writes since Iron) or ``sqlite3``.
    An existing ``path`` is an error (``FileExistsError``) unless ``overwrite=True``, which deletes it.
    Each ``write_*`` takes ``stamp_ns`` (header stamp, also the bag receive time unless ``log_time_ns``).
    """

    def __init__(self, path, *, storage: str = "mcap", overwrite: bool = False) -> None:
        if storage not in STORAGE_FORMATS:
            raise ValueError(f"`storage` must be one of {STORAGE_FORMATS}; got {storage!r}")
        self.path = Path(path)
        self.storage = storage
        self.overwrite = overwrite
        self._writer = None
        self._connections: dict[str, object] = {}
        self.counts: Counter[str] = Counter()

    # -------------------------------------------------------------------------------- lifecycle
    def open(self) -> BagWriter:
        from rosbags.rosbag2 import StoragePlugin, Writer

        if self.path.exists() or self.path.is_symlink():
            if not self.overwrite:
                raise FileExistsError(f"output bag `{self.path}` already exists (choose another path or overwrite)")
            if self.path.is_dir() and not self.path.is_symlink():
                shutil.rmtree(self.path)
            else:
                self.path.unlink()
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"parent folder of `{self.path}` does not exist")
        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        self._writer.open()
        return self

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> BagWriter:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------------------------- writing
    def write_message(self, topic: str, msgtype: str, msg, timestamp_ns: int) -> None:
        """Record a ``rosbags`` message object ``msg`` of ``msgtype`` at bag time ``timestamp_ns``."""
        if self._writer is None:
            raise RuntimeError("the bag is not open: use `with BagWriter(...) as bag:` or call open()")
        if not isinstance(topic, str) or not topic.startswith("/"):
            raise ValueError(f"`topic` must be an absolute topic name starting with '/'; got {topic!r}")
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=typestore())
            self._connections[topic] = conn
        elif conn.msgtype != msgtype:
            raise ValueError(f"topic `{topic}` already carries {conn.msgtype}; got {msgtype}")
        self._writer.write(conn, _check_stamp(timestamp_ns), typestore().serialize_cdr(msg, msgtype))
        self.counts[topic] += 1

    def write_image(self, topic: str, array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str, *,
                    log_time_ns: int | None = None) -> None:
        """``array`` ``[H,W]``/``[H,W,C]`` -> sensor_msgs/Image in ``encoding`` (e.g. rgb8, 32FC1, 16UC1)."""
        stamp_ns = _check_stamp(stamp_ns)
        h, w, step, data = encode_image(array, encoding)
        msg = typestore().types[IMAGE_TYPE](header=_header(stamp_ns, frame_id), height=h, width=w, encoding=encoding,
                                            is_bigendian=0, step=step, data=np.frombuffer(data, np.uint8))
        self.write_message(topic, IMAGE_TYPE, msg, stamp_ns if log_time_ns is None else log_time_ns)

    def write_compressed_image(self, topic: str, rgb: np.ndarray, stamp_ns: int, frame_id: str, *,
                               fmt: str = "jpeg", quality: int = 90, log_time_ns: int | None = None) -> None:
        """``rgb`` ``[H,W,3]`` uint8 -> sensor_msgs/CompressedImage (``jpeg`` or ``png``, image_transport style)."""
        import cv2

        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"`rgb` must be uint8 [H,W,3]; got {rgb.dtype} {rgb.shape}")
        if fmt not in ("jpeg", "png"):
            raise ValueError(f"`fmt` must be 'jpeg' or 'png'; got {fmt!r}")
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
        ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", rgb[:, :, ::-1], params)
        if not ok:
            raise RuntimeError(f"OpenCV could not encode a {rgb.shape} image as {fmt}")
        msg = typestore().types[COMPRESSED_TYPE](header=_header(stamp_ns, frame_id), format=f"rgb8; {fmt} compressed bgr8",
                                                 data=buf.reshape(-1))
        self.write_message(topic, COMPRESSED_TYPE, msg, stamp_ns if log_time_ns is None else log_time_ns)

    def write_camera_info(self, topic: str, K, size_hw: tuple[int, int], stamp_ns: int, frame_id: str, *,
                          D: Iterable[float] = (0.0, 0.0, 0.0, 0.0, 0.0), distortion_model: str = "plumb_bob",
                          log_time_ns: int | None = None) -> None:
        """Pinhole ``K`` [3,3] for an image ``size_hw`` = (H, W) -> sensor_msgs/CameraInfo (R = I, P = [K|0])."""
        msg = camera_info_msg(K, size_hw, stamp_ns, frame_id, D=D, distortion_model=distortion_model)
        self.write_message(topic, CAMERA_INFO_TYPE, msg, _check_stamp(stamp_ns) if log_time_ns is None else log_time_ns)

    def write_pointcloud(self, topic: str, cloud: np.ndarray, stamp_ns: int, frame_id: str, *,
                         log_time_ns: int | None = None) -> None:
        """Structured array ``[h,w]`` (organized) or ``[N]`` -> sensor_msgs/PointCloud2 with its fields."""
        cloud = np.asarray(cloud)
        if cloud.dtype.names is None or cloud.ndim not in (1, 2):
            raise ValueError(f"`cloud` must be a structured array [N] or [h,w]; got {cloud.dtype} {cloud.shape}")
        ts = typestore()
        PointField = ts.types["sensor_msgs/msg/PointField"]
        fields = []
        for name in cloud.dtype.names:
            ftype, offset = cloud.dtype.fields[name][:2]
            base = ftype.base
            key = f"{base.kind}{base.itemsize}"
            if key not in _POINTFIELD_TYPES:
                raise ValueError(f"cloud field `{name}` must be an int/uint/float scalar type; got {ftype}")
            fields.append(PointField(name=name, offset=int(offset), datatype=_POINTFIELD_TYPES[key],
                                     count=int(np.prod(ftype.shape)) if ftype.shape else 1))
        h, w = (1, cloud.shape[0]) if cloud.ndim == 1 else cloud.shape
        le = cloud.astype(cloud.dtype.newbyteorder("<"), copy=False)
        is_dense = not any(np.isnan(cloud[n]).any() for n in ("x", "y", "z") if n in cloud.dtype.names)
        msg = ts.types[POINTCLOUD2_TYPE](
            header=_header(_check_stamp(stamp_ns), frame_id), height=h, width=w, fields=fields, is_bigendian=False,
            point_step=cloud.dtype.itemsize, row_step=cloud.dtype.itemsize * w,
            data=np.frombuffer(np.ascontiguousarray(le).tobytes(), np.uint8), is_dense=is_dense)
        self.write_message(topic, POINTCLOUD2_TYPE, msg, stamp_ns if log_time_ns is None else log_time_ns)


def camera_info_msg(K, size_hw: tuple[int, int], stamp_ns: int, frame_id: str, *,
                    D: Iterable[float] = (0.0, 0.0, 0.0, 0.0, 0.0), distortion_model: str = "plumb_bob"):
    """A ``rosbags`` sensor_msgs/CameraInfo for pinhole ``K`` [3,3] and image ``size_hw`` = (H, W)."""
    from d3_perception.geometry.intrinsics import check_intrinsics

    K = check_intrinsics(K)
    h, w = (int(v) for v in size_hw)
    if h <= 0 or w <= 0:
        raise ValueError(f"`size_hw` must be positive (H, W); got {size_hw}")
    ts = typestore()
    P = np.zeros((3, 4))
    P[:, :3] = K
    roi = ts.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return ts.types[CAMERA_INFO_TYPE](
        header=_header(_check_stamp(stamp_ns), frame_id), height=h, width=w, distortion_model=distortion_model,
        d=np.asarray(list(D), np.float64), k=K.reshape(-1).copy(), r=np.eye(3).reshape(-1), p=P.reshape(-1),
        binning_x=0, binning_y=0, roi=roi)


# ------------------------------------------------------------------------------------------ reading
def read_messages(path, topics: Iterable[str] | None = None) -> Iterator[tuple[str, str, int, object]]:
    """Yield ``(topic, msgtype, timestamp_ns, msg)`` in bag-time order from a ROS 2 bag (mcap or sqlite3).

    ``timestamp_ns`` is the bag (receive) time; the header stamp is ``stamp_to_ns(msg.header)``.
    ``topics``: only these topics (None = all). Raises ``FileNotFoundError`` for a missing bag.
    """
    from rosbags.highlevel import AnyReader

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag `{path}` does not exist")
    wanted = None if topics is None else set(topics)
    with AnyReader([path], default_typestore=typestore()) as reader:
        conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
        for conn, timestamp, raw in reader.messages(connections=conns):
            yield conn.topic, conn.msgtype, int(timestamp), reader.deserialize(raw, conn.msgtype)


def bag_summary(path) -> dict[str, tuple[str, int]]:
    """``{topic: (msgtype, message count)}`` from the bag's metadata (nothing is deserialised)."""
    from rosbags.highlevel import AnyReader

    with AnyReader([Path(path)], default_typestore=typestore()) as reader:
        out: dict[str, tuple[str, int]] = {}
        for c in reader.connections:
            prev = out.get(c.topic, (c.msgtype, 0))[1]
            out[c.topic] = (c.msgtype, prev + int(c.msgcount))
        return out


def camera_info_to_K(msg) -> np.ndarray:
    """sensor_msgs/CameraInfo (rosbags or rclpy) -> ``K`` [3,3] float64."""
    return np.asarray(msg.k, np.float64).reshape(3, 3).copy()


def decode_compressed(msg) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg/png) -> ``[H,W,3]`` uint8 RGB; ``ValueError`` if undecodable."""
    import cv2

    buf = np.frombuffer(bytes(msg.data) if not isinstance(msg.data, np.ndarray) else msg.data.tobytes(), np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"CompressedImage data ({buf.size} bytes, format `{msg.format}`) is not a decodable image")
    return img[:, :, ::-1].copy()


def cloud_from_msg(msg) -> np.ndarray:
    """sensor_msgs/PointCloud2 -> structured array ``[height, width]`` viewing the fields (a copy)."""
    inv = {v: k for k, v in _POINTFIELD_TYPES.items()}
    names, formats, offsets = [], [], []
    for f in msg.fields:
        kind = inv.get(int(f.datatype))
        if kind is None:
            raise ValueError(f"PointField `{f.name}` has unknown datatype {f.datatype}")
        names.append(f.name)
        dt = np.dtype((">" if msg.is_bigendian else "<") + kind)
        formats.append(dt if f.count == 1 else (dt, (int(f.count),)))
        offsets.append(int(f.offset))
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": int(msg.point_step)})
    data = np.frombuffer(bytes(msg.data) if not isinstance(msg.data, np.ndarray) else msg.data.tobytes(), np.uint8)
    rows = data.reshape(int(msg.height), int(msg.row_step))[:, : int(msg.width) * int(msg.point_step)]
    return np.ascontiguousarray(rows).view(dtype).reshape(int(msg.height), int(msg.width)).copy()
