"""Read a ROS 2 bag for evaluation: topic selection, stamp matching, decoded frames.

Pass 1 (:meth:`BagSource.index`) reads the header stamps of the chosen topics and matches every camera image to
the ground truth (and optional sparse depth, GT normals, recorded predictions) by header stamp within a
tolerance. Pass 2 (:meth:`BagSource.frames`) streams the bag once more and yields decoded :class:`BagFrame`s of
the matched pairs only, holding back a message just until its partner arrives (bounded memory).

Bags are read with ``rosbags`` (sqlite3 and MCAP; a bag folder or a single ``.mcap``/``.db3`` file). Every
problem with the bag (unreadable, corrupt, truncated, unknown or ambiguous topic, nothing to match) raises
:class:`BagError` with a one-line message; messages that cannot be decoded are counted and skipped.
"""

from __future__ import annotations

import bisect
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from d3_perception.geometry.units import mm_to_m
from d3_perception.image_codec import (
    COLOR_ENCODINGS,
    DEPTH_ENCODINGS,
    ImageDecodeError,
    decode_image,
    to_rgb8,
)
from d3_perception.image_codec import (
    decode_depth_m as decode_depth_image,
)
from d3_perception.rosbag_io import (
    CAMERA_INFO_TYPE,
    COMPRESSED_TYPE,
    IMAGE_TYPE,
    decode_compressed,
    typestore,
)

__all__ = ["BagError", "BagFrame", "BagSource", "TopicSelection"]

logger = logging.getLogger(__name__)

# a camera image when guessing topics: a colour encoding that is not also a depth one (mono16 is taken as depth)
_COLOR_ENCODINGS = frozenset(COLOR_ENCODINGS) - frozenset(DEPTH_ENCODINGS)
_NOT_GT_WORDS = ("sparse", "relative", "colored", "pred", "confidence")


def _is_depth(encoding: str | None) -> bool:
    """A depth Image encoding or an image_transport compressedDepth format."""
    return encoding is not None and (encoding in DEPTH_ENCODINGS or "compressedDepth" in encoding)


class BagError(ValueError):
    """A bag that cannot be evaluated as asked; the message is one line (with the available topics)."""


@dataclass(frozen=True)
class TopicSelection:
    """Topics used for one evaluation (absolute names; None = not used)."""

    image: str | None
    depth: str | None
    camera_info: str | None = None
    sparse: str | None = None
    normals: str | None = None
    pred: str | None = None
    pred_normals: str | None = None


@dataclass
class BagFrame:
    """One matched frame.

    Attributes:
        index: position among matched frames (0-based, bag order).
        stamp_ns: header stamp of the camera image (or of the recorded prediction in ``--pred-topic`` mode).
        log_time_ns: bag receive time of that message.
        frame_id: header frame_id of the image (or prediction).
        rgb: ``[H,W,3]`` uint8 RGB, or None in ``--pred-topic`` mode without an image topic.
        depth_m: ``[H,W]`` float32 ground truth in metres, NaN = invalid.
        K: ``[3,3]`` float64 intrinsics of the nearest camera_info, or None.
        sparse_m: ``[H,W]`` float32 sparse metric reference (NaN = none), or None.
        normals: ``[H,W,3]`` float32 GT normals in the optical frame, or None.
        pred: ``[H,W]`` float32 recorded prediction (``--pred-topic``), or None.
        pred_normals: ``[H,W,3]`` float32 recorded normals, or None.
        pred_log_time_ns: bag receive time of the recorded prediction (stamp-to-record latency).
        raw: ``{topic: (msgtype, log_time_ns, msg)}`` of the input messages (for ``--write-bag``).
    """

    index: int
    stamp_ns: int
    log_time_ns: int
    frame_id: str
    rgb: np.ndarray | None
    depth_m: np.ndarray
    K: np.ndarray | None = None
    sparse_m: np.ndarray | None = None
    normals: np.ndarray | None = None
    pred: np.ndarray | None = None
    pred_normals: np.ndarray | None = None
    pred_log_time_ns: int | None = None
    raw: dict = field(default_factory=dict)


def _stamp(msg) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def _raw_stamp(raw: bytes) -> int:
    """Header stamp straight from serialized CDR (every message used here starts with std_msgs/Header).

    Bytes 0-3 are the encapsulation header (byte 1: 1 = little endian), then ``int32 sec``, ``uint32 nanosec``;
    reading 8 bytes instead of deserialising a whole image keeps pass 1 cheap.
    """
    sec, nanosec = struct.unpack_from("<iI" if raw[1] & 1 else ">iI", raw, 4)
    return int(sec) * 1_000_000_000 + int(nanosec)


def _nearest(sorted_stamps: list[int], stamp: int, tol_ns: int) -> int | None:
    """Index of the stamp nearest to ``stamp`` within ``tol_ns``, or None."""
    i = bisect.bisect_left(sorted_stamps, stamp)
    best, best_dt = None, tol_ns + 1
    for j in (i - 1, i):
        if 0 <= j < len(sorted_stamps):
            dt = abs(sorted_stamps[j] - stamp)
            if dt < best_dt:
                best, best_dt = j, dt
    return best


def decode_depth_m(msg) -> np.ndarray:
    """Depth message -> ``[H,W]`` float32 metres, NaN = invalid.

    sensor_msgs/Image 16UC1/mono16 (mm, 0 = invalid) or 32FC1 (m, NaN/<=0 = invalid), or a CompressedImage of
    image_transport's ``compressedDepth`` PNG codec (``"16UC1; compressedDepth png"`` / ``"32FC1; compressedDepth"``).
    """
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        return _decode_compressed_depth(msg)
    if str(msg.encoding) not in DEPTH_ENCODINGS:
        raise ImageDecodeError(f"depth `encoding` must be one of {sorted(DEPTH_ENCODINGS)}; got `{msg.encoding}`")
    return decode_depth_image(msg)


def _decode_compressed_depth(msg) -> np.ndarray:
    """compressed_depth_image_transport PNG: a 12-byte header (int32 format, float32 quantisation A, B), then PNG.

    16UC1: the PNG holds millimetres. 32FC1: it holds quantised inverse depth, depth = A / (v - B), v = 0 invalid.
    Written by hand because image_transport plugins are not on the package registries.
    """
    import cv2

    fmt = str(msg.format)
    if "compressedDepth" not in fmt:
        raise ImageDecodeError(f"depth CompressedImage `format` must be a compressedDepth format; got `{fmt}`")
    if "rvl" in fmt.lower():
        raise ImageDecodeError(f"compressedDepth RVL is not supported (only PNG); got `{fmt}`")
    data = msg.data.tobytes() if isinstance(msg.data, np.ndarray) else bytes(msg.data)
    if len(data) <= 12:
        raise ImageDecodeError(f"compressedDepth `data` must hold a 12-byte header and a PNG; got {len(data)} bytes")
    _, quant_a, quant_b = struct.unpack_from("<iff", data, 0)
    img = cv2.imdecode(np.frombuffer(data, np.uint8, offset=12), cv2.IMREAD_UNCHANGED)
    if img is None or img.dtype != np.uint16 or img.ndim != 2:
        raise ImageDecodeError(f"compressedDepth payload must be a 16-bit single-channel PNG (format `{fmt}`)")
    if fmt.split(";")[0].strip() == "32FC1":
        with np.errstate(divide="ignore", invalid="ignore"):
            depth = np.float32(quant_a) / (img.astype(np.float32) - np.float32(quant_b))
        depth[(img == 0) | ~np.isfinite(depth) | (depth <= 0)] = np.nan
        return depth
    return mm_to_m(img)


def decode_rgb(msgtype: str, msg) -> np.ndarray:
    """Image (colour encodings) or CompressedImage -> ``[H,W,3]`` uint8 RGB."""
    if msgtype == COMPRESSED_TYPE:
        return decode_compressed(msg)
    return to_rgb8(decode_image(msg), str(msg.encoding))


class BagSource:
    """An opened bag with its topic table; see the module docstring for the two passes."""

    def __init__(self, path: str | Path) -> None:
        from rosbags.highlevel import AnyReader

        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag `{self.path}` does not exist")
        try:
            self._reader = AnyReader([self.path], default_typestore=typestore())
            self._reader.open()
        except Exception as exc:  # rosbags raises several unrelated types for damaged bags
            raise BagError(f"`{self.path}` cannot be read as a ROS 2 bag (sqlite3/mcap; corrupt or truncated?): {_one_line(exc)}") from None
        self.topics: dict[str, tuple[str, int]] = {}
        for conn in self._reader.connections:
            msgtype, count = self.topics.get(conn.topic, (conn.msgtype, 0))
            self.topics[conn.topic] = (msgtype, count + int(conn.msgcount or 0))
        self._encodings: dict[str, str] = {}
        self.storage = "mcap" if any(p.suffix == ".mcap" for p in self._paths()) else "sqlite3"
        self.skipped: dict[str, int] = {}  # reason -> count of messages that could not be decoded

    def _paths(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        return sorted(self.path.iterdir())

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> BagSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ topics
    def listing(self) -> str:
        """``/a (sensor_msgs/msg/Image [rgb8], 10 msgs), ...`` for error messages."""
        parts = []
        for topic, (msgtype, count) in sorted(self.topics.items()):
            enc = self._encodings.get(topic)
            parts.append(f"{topic} ({msgtype}{f' [{enc}]' if enc else ''}, {count} msgs)")
        return "; ".join(parts) if parts else "(no topics)"

    def _messages(self, topics: list[str]):
        conns = [c for c in self._reader.connections if c.topic in topics]
        return self._reader.messages(connections=conns)

    def _encoding(self, topic: str) -> str | None:
        """Encoding of the first message of an Image topic (peeked once)."""
        if topic not in self._encodings:
            enc = None
            try:
                for conn, _, raw in self._messages([topic]):
                    msg = self._reader.deserialize(raw, conn.msgtype)
                    enc = str(getattr(msg, "encoding", None) or getattr(msg, "format", ""))
                    break
            except Exception as exc:
                raise BagError(f"`{self.path}` is corrupt or truncated (reading {topic}): {_one_line(exc)}") from None
            self._encodings[topic] = enc or "?"
        return self._encodings[topic]

    def _require(self, topic: str, what: str, types: tuple[str, ...]) -> str:
        if topic not in self.topics:
            self._peek_all()
            raise BagError(f"{what} topic `{topic}` is not in the bag; available: {self.listing()}")
        if self.topics[topic][0] not in types:
            raise BagError(f"{what} topic `{topic}` must be {' or '.join(types)}; got {self.topics[topic][0]}")
        return topic

    def _peek_all(self) -> None:
        for topic, (msgtype, count) in self.topics.items():
            if msgtype in (IMAGE_TYPE, COMPRESSED_TYPE) and count:
                self._encoding(topic)

    def _pick(self, candidates: list[str], what: str, option: str, near: str | None = None) -> str:
        if len(candidates) == 1:
            return candidates[0]
        if near is not None and len(candidates) > 1:
            ns = near.rsplit("/", 1)[0]
            same_ns = [c for c in candidates if c.rsplit("/", 1)[0] == ns]
            if len(same_ns) == 1:
                return same_ns[0]
        self._peek_all()
        if not candidates:
            raise BagError(f"no {what} topic found in the bag (pass {option}); available: {self.listing()}")
        raise BagError(
            f"several {what} topics ({', '.join(candidates)}); choose one with {option}; available: {self.listing()}"
        )

    def _camera_candidates(self, pred: str | None = None) -> list[str]:
        """Topics that look like the camera: colour Image or non-depth CompressedImage, not colour-mapped outputs
        (depth/colored) nor anything next to a recorded prediction ``pred``; raw preferred over compressed."""
        pred_root = "/" + pred.strip("/").split("/")[0] + "/" if pred else None
        cands = [t for t, (ty, n) in self.topics.items()
                 if ty == COMPRESSED_TYPE and n and not _is_depth(self._encoding(t))]
        cands += [t for t, (ty, n) in self.topics.items() if ty == IMAGE_TYPE and n and self._encoding(t) in _COLOR_ENCODINGS]
        cands = [t for t in cands if "colored" not in t.lower() and not (pred_root and t.startswith(pred_root))]
        if len(cands) > 1:  # raw and compressed of the same camera: prefer raw
            raw = [c for c in cands if self.topics[c][0] == IMAGE_TYPE]
            cands = raw if len(raw) == 1 else cands
        return cands

    def camera_topic(self, image: str | None = None, option: str = "--calibration-topic") -> str:
        """``image`` checked, else the one camera topic of the bag (:class:`BagError` naming ``option`` when
        there are several or none)."""
        if image is not None:
            return self._require(image, "image", (IMAGE_TYPE, COMPRESSED_TYPE))
        return self._pick(sorted(self._camera_candidates()), "camera image", option)

    def camera_frames(self, indices, image: str | None = None) -> list[np.ndarray]:
        """The decoded ``[H,W,3]`` uint8 RGB frames at these message positions of the camera topic (``image``,
        else the one camera topic found as :meth:`select` finds it), in recording order; only those messages
        are decoded. Undecodable messages are skipped and counted in :attr:`skipped`."""
        topic = self.camera_topic(image)
        wanted = set(indices)
        last = max(wanted, default=-1)
        frames = []
        try:
            for i, (conn, _, raw) in enumerate(self._messages([topic])):
                if i > last:  # every wanted message read: the rest of the bag is not needed
                    break
                if i not in wanted:
                    continue
                try:
                    frames.append(decode_rgb(conn.msgtype, self._reader.deserialize(raw, conn.msgtype)))
                except (ImageDecodeError, ValueError) as exc:
                    reason = f"undecodable image: {_one_line(exc)}"
                    self.skipped[reason] = self.skipped.get(reason, 0) + 1
        except Exception as exc:  # rosbags raises several unrelated types for damaged bags
            raise BagError(f"`{self.path}` is corrupt or truncated (reading {topic}): {_one_line(exc)}") from None
        if not frames:
            raise BagError(f"no decodable image on `{topic}` in `{self.path}`")
        return frames

    def select(
        self,
        *,
        image: str | None = None,
        depth: str | None = None,
        camera_info: str | None = None,
        sparse: str | None = None,
        normals: str | None = None,
        pred: str | None = None,
        pred_normals: str | None = None,
        need_image: bool = True,
        need_sparse: bool = False,
    ) -> TopicSelection:
        """Resolve topics: given names are checked, missing ones auto-detected (error when ambiguous)."""
        image_types = (IMAGE_TYPE, COMPRESSED_TYPE)
        if pred is not None:
            pred = self._require(pred, "prediction", (IMAGE_TYPE,))
        if pred_normals is not None:
            pred_normals = self._require(pred_normals, "predicted normals", (IMAGE_TYPE,))
        if image is not None:
            image = self._require(image, "image", image_types)
        else:
            cands = self._camera_candidates(pred)
            if need_image:
                image = self._pick(sorted(cands), "camera image", "--image-topic")
            elif len(cands) == 1:
                image = cands[0]  # optional with --pred-topic: only used for the montage and point colours
        if depth is not None:
            depth = self._require(depth, "ground-truth depth", (IMAGE_TYPE, COMPRESSED_TYPE))
        else:
            taken = {pred, sparse}
            # Topics next to a recorded prediction (e.g. /d3/depth beside /d3/depth/relative) are not ground truth.
            pred_root = "/" + pred.strip("/").split("/")[0] + "/" if pred else None
            cands = [
                t
                for t, (ty, n) in self.topics.items()
                if ty in (IMAGE_TYPE, COMPRESSED_TYPE) and n and t not in taken and _is_depth(self._encoding(t))
                and not any(w in t.lower() for w in _NOT_GT_WORDS)
                and not (pred_root and t.startswith(pred_root))
            ]
            depth = self._pick(sorted(cands), "ground-truth depth (16UC1 mm / 32FC1 m)", "--depth-topic", image)
        if camera_info is not None:
            camera_info = self._require(camera_info, "camera_info", (CAMERA_INFO_TYPE,))
        else:
            cands = sorted(t for t, (ty, n) in self.topics.items() if ty == CAMERA_INFO_TYPE and n)
            if cands:
                try:
                    camera_info = self._pick(cands, "camera_info", "--camera-info-topic", image or pred)
                except BagError:
                    camera_info = None  # optional: only needed for point clouds; reported as missing
        if sparse is not None:
            sparse = self._require(sparse, "sparse depth", (IMAGE_TYPE, COMPRESSED_TYPE))
        elif need_sparse:
            cands = sorted(t for t, (ty, n) in self.topics.items() if ty == IMAGE_TYPE and n and "sparse" in t.lower())
            sparse = self._pick(cands, "sparse depth", "--sparse-topic", image)
        if normals is not None:
            normals = self._require(normals, "ground-truth normals", (IMAGE_TYPE,))
        return TopicSelection(image, depth, camera_info, sparse, normals, pred, pred_normals)

    # ------------------------------------------------------------------------------------------ pass 1
    def index(self, sel: TopicSelection, max_dt_ns: int) -> BagIndex:
        """Header stamps of the selected topics and the matching of frames to ground truth."""
        topics = [t for t in (sel.image, sel.depth, sel.camera_info, sel.sparse, sel.normals, sel.pred,
                              sel.pred_normals) if t]
        stamps: dict[str, list[int]] = {t: [] for t in topics}
        log_times: dict[str, list[int]] = {t: [] for t in topics}
        intrinsics: list[tuple[int, np.ndarray, tuple[int, int]]] = []
        try:
            for conn, t_ns, raw in self._messages(topics):
                stamp = _raw_stamp(raw)
                stamps[conn.topic].append(stamp)
                log_times[conn.topic].append(int(t_ns))
                if conn.topic == sel.camera_info:
                    msg = self._reader.deserialize(raw, conn.msgtype)
                    K = np.asarray(msg.k, np.float64).reshape(3, 3)
                    if K[0, 0] > 0 and K[1, 1] > 0:
                        intrinsics.append((stamp, K.copy(), (int(msg.height), int(msg.width))))
        except Exception as exc:
            raise BagError(f"`{self.path}` is corrupt or truncated: {_one_line(exc)}") from None
        return BagIndex(sel, stamps, log_times, intrinsics, max_dt_ns)

    # ------------------------------------------------------------------------------------------ pass 2
    def frames(self, idx: BagIndex, keep_raw: bool = False) -> Iterator[BagFrame]:
        """Decoded matched frames in order. A bag that breaks mid-way raises :class:`BagError`."""
        sel = idx.sel
        key_topic = sel.pred if sel.pred else sel.image
        partners = [t for t in (sel.image, sel.depth, sel.sparse, sel.normals, sel.pred_normals) if t and t != key_topic]
        wanted: dict[str, set[int]] = {t: set() for t in partners}
        for m in idx.matches:
            for t in partners:
                if m.get(t) is not None:
                    wanted[t].add(m[t])
        key_stamps = {m[key_topic]: i for i, m in enumerate(idx.matches)}
        last_use: dict[tuple[str, int], int] = {}
        for i, m in enumerate(idx.matches):
            for t in partners:
                if m.get(t) is not None:
                    last_use[(t, m[t])] = i
        pending: dict[int, dict] = {}  # match index -> collected parts
        held: dict[tuple[str, int], tuple] = {}  # (topic, stamp) -> (msgtype, t_ns, msg) waiting for the key
        next_out = 0
        topics = [key_topic, *partners]
        try:
            stream = self._messages(topics)
            for conn, t_ns, raw in stream:
                stamp = _raw_stamp(raw)
                if conn.topic == key_topic:
                    i = key_stamps.pop(stamp, None)
                    if i is None:
                        continue
                    msg = self._reader.deserialize(raw, conn.msgtype)
                    pending[i] = {key_topic: (conn.msgtype, int(t_ns), msg)}
                    for t in partners:
                        s = idx.matches[i].get(t)
                        if s is not None and (t, s) in held:
                            pending[i][t] = held[(t, s)]
                elif stamp in wanted.get(conn.topic, ()):
                    msg = self._reader.deserialize(raw, conn.msgtype)
                    held[(conn.topic, stamp)] = (conn.msgtype, int(t_ns), msg)
                    for i, parts in pending.items():
                        if idx.matches[i].get(conn.topic) == stamp:
                            parts[conn.topic] = held[(conn.topic, stamp)]
                else:
                    continue
                while next_out in pending and self._complete(idx.matches[next_out], pending[next_out], partners):
                    frame = self._decode(idx, next_out, pending.pop(next_out), keep_raw)
                    for t in partners:
                        s = idx.matches[next_out].get(t)
                        if s is not None and last_use.get((t, s)) == next_out:
                            held.pop((t, s), None)
                    next_out += 1
                    if frame is not None:
                        yield frame
        except BagError:
            raise
        except Exception as exc:
            raise BagError(f"`{self.path}` is corrupt or truncated after {next_out} frames: {_one_line(exc)}") from None
        # Frames whose partner never arrived (should not happen after pass 1) are flushed with what is there.
        for i in sorted(pending):
            frame = self._decode(idx, i, pending.pop(i), keep_raw)
            if frame is not None:
                yield frame

    @staticmethod
    def _complete(match: dict, parts: dict, partners: list[str]) -> bool:
        return all(match.get(t) is None or t in parts for t in partners)

    def _decode(self, idx: BagIndex, i: int, parts: dict, keep_raw: bool) -> BagFrame | None:
        sel = idx.sel
        key_topic = sel.pred if sel.pred else sel.image
        msgtype, t_ns, key_msg = parts[key_topic]
        try:
            rgb = None
            if sel.image and sel.image in parts:
                rgb = decode_rgb(parts[sel.image][0], parts[sel.image][2])
            depth = decode_depth_m(parts[sel.depth][2])
            sparse = decode_depth_m(parts[sel.sparse][2]) if sel.sparse and sel.sparse in parts else None
            normals = None
            if sel.normals and sel.normals in parts:
                normals = self._decode_normals(parts[sel.normals][2], "ground-truth normals")
            pred = pred_normals = None
            if sel.pred:
                pred = decode_image(key_msg)
                if pred.ndim != 2 or pred.dtype != np.float32:
                    raise ImageDecodeError(f"prediction `encoding` must be 32FC1; got `{key_msg.encoding}`")
            if sel.pred_normals and sel.pred_normals in parts:
                pred_normals = self._decode_normals(parts[sel.pred_normals][2], "predicted normals")
            ref = pred if pred is not None else rgb
            for name, arr in (("ground truth", depth), ("sparse depth", sparse), ("normals", normals),
                              ("predicted normals", pred_normals)):
                if arr is not None and ref is not None and arr.shape[:2] != ref.shape[:2]:
                    raise ImageDecodeError(f"{name} size {arr.shape[:2]} must equal the image size {ref.shape[:2]}")
        except (ImageDecodeError, ValueError) as exc:
            reason = _one_line(exc)
            self.skipped[reason] = self.skipped.get(reason, 0) + 1
            logger.warning("frame %d skipped: %s", i, reason)
            return None
        K = idx.intrinsics_at(idx.matches[i][key_topic], (depth.shape[0], depth.shape[1]))
        raw = {}
        if keep_raw:
            raw = {t: parts[t] for t in parts}
        return BagFrame(
            index=i,
            stamp_ns=_stamp(key_msg),
            log_time_ns=t_ns,
            frame_id=str(key_msg.header.frame_id),
            rgb=rgb,
            depth_m=depth,
            K=K,
            sparse_m=sparse,
            normals=normals,
            pred=pred,
            pred_normals=pred_normals,
            pred_log_time_ns=t_ns if sel.pred else None,
            raw=raw,
        )

    @staticmethod
    def _decode_normals(msg, what: str) -> np.ndarray:
        arr = decode_image(msg)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.float32:
            raise ImageDecodeError(f"{what} `encoding` must be 32FC3; got `{msg.encoding}`")
        return arr


class BagIndex:
    """Result of pass 1: matches of the key topic (image, or prediction) to the other topics."""

    def __init__(self, sel: TopicSelection, stamps: dict[str, list[int]], log_times: dict[str, list[int]],
                 intrinsics: list[tuple[int, np.ndarray, tuple[int, int]]], max_dt_ns: int) -> None:
        self.sel = sel
        self.max_dt_ns = int(max_dt_ns)
        self.counts = {t: len(v) for t, v in stamps.items()}
        key = sel.pred if sel.pred else sel.image
        self.key_topic = key
        self._intrinsics = sorted(intrinsics, key=lambda x: x[0])
        self._k_stamps = [s for s, _, _ in self._intrinsics]
        sorted_stamps = {t: sorted(set(v)) for t, v in stamps.items()}
        self.duplicates = {t: len(v) - len(set(v)) for t, v in stamps.items() if len(v) != len(set(v))}
        self.matches: list[dict[str, int | None]] = []
        self.unmatched_frames = 0  # key messages without ground truth
        self.dts_ns: list[int] = []
        seen = set()
        for stamp in sorted(set(stamps[key])):
            if stamp in seen:
                continue
            seen.add(stamp)
            match: dict[str, int | None] = {key: stamp}
            gt_j = _nearest(sorted_stamps[sel.depth], stamp, self.max_dt_ns)
            if gt_j is None:
                self.unmatched_frames += 1
                continue
            match[sel.depth] = sorted_stamps[sel.depth][gt_j]
            self.dts_ns.append(abs(match[sel.depth] - stamp))
            if sel.pred and sel.image:
                j = _nearest(sorted_stamps[sel.image], stamp, self.max_dt_ns)
                match[sel.image] = None if j is None else sorted_stamps[sel.image][j]
            for t in (sel.sparse, sel.normals, sel.pred_normals):
                if t:
                    j = _nearest(sorted_stamps[t], stamp, self.max_dt_ns)
                    match[t] = None if j is None else sorted_stamps[t][j]
            self.matches.append(match)
        used_gt = {m[sel.depth] for m in self.matches}
        self.unmatched_gt = len(sorted_stamps[sel.depth]) - len(used_gt)
        self.missing = {
            t: sum(1 for m in self.matches if m.get(t) is None)
            for t in (sel.sparse, sel.normals, sel.pred_normals, sel.image if sel.pred else None)
            if t
        }
        self.first_stamps = {t: (v[0] if v else None) for t, v in sorted_stamps.items()}
        self.log_times = log_times

    def intrinsics_at(self, stamp: int, size_hw: tuple[int, int]) -> np.ndarray | None:
        """K of the camera_info nearest in time, scaled to ``size_hw`` when its size differs."""
        if not self._intrinsics:
            return None
        j = _nearest(self._k_stamps, stamp, 1 << 62)
        _, K, (h, w) = self._intrinsics[j]
        if (h, w) != tuple(size_hw) and h > 0 and w > 0:
            from d3_perception.geometry.intrinsics import scale_intrinsics

            return scale_intrinsics(K, (h, w), size_hw)
        return K


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
