"""One owner per fact: the colour/depth encoding lists (node and bag reader used to disagree: 11 vs 9), the
depth -> metres conversion, and the sparse metric reference built on them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from d3_perception.geometry.units import depth_to_m
from d3_perception.image_codec import (
    COLOR_ENCODINGS,
    DEPTH_ENCODINGS,
    ENCODINGS,
    ImageDecodeError,
    decode_depth_m,
    decode_image,
    encode_image,
    to_rgb8,
)
from d3_perception.ros.sparse_reference import SparseReference, rescale_sparse


def _msg(array, encoding, stamp_s=0.0):
    h, w, step, data = encode_image(array, encoding)
    sec = int(stamp_s)
    return SimpleNamespace(height=h, width=w, encoding=encoding, is_bigendian=0, step=step, data=data,
                           header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=int((stamp_s - sec) * 1e9))))


@pytest.mark.parametrize("encoding", COLOR_ENCODINGS)
def test_every_colour_encoding_becomes_the_models_rgb(encoding):
    info = ENCODINGS[encoding]
    shape = (6, 8, info.channels) if info.channels > 1 else (6, 8)
    arr = np.random.default_rng(1).integers(0, 200, shape).astype(info.dtype)
    rgb = to_rgb8(decode_image(_msg(arr, encoding)), encoding)
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8


def test_node_and_bag_reader_share_the_colour_list():
    from d3_perception.evaluation import bag_source
    from d3_perception.ros import conversions  # the node's decoding module

    assert conversions.COLOR_ENCODINGS is COLOR_ENCODINGS
    # the bag reader guesses camera topics from the same list, leaving out what is also a depth encoding
    assert bag_source._COLOR_ENCODINGS == set(COLOR_ENCODINGS) - set(DEPTH_ENCODINGS)
    assert "8UC1" in bag_source._COLOR_ENCODINGS and "mono16" not in bag_source._COLOR_ENCODINGS
    for depth in ("16UC1", "32FC1"):  # depth only (mono16 is also a grey camera image)
        with pytest.raises(ValueError, match="not a colour camera encoding"):
            to_rgb8(np.zeros((2, 2), ENCODINGS[depth].dtype), depth)


def test_depth_to_metres_marks_every_invalid_pixel_nan():
    mm = np.array([[0, 1500], [65535, 1]], np.uint16)
    np.testing.assert_allclose(depth_to_m(mm), np.array([[np.nan, 1.5], [65.535, 0.001]], np.float32), rtol=1e-6)
    m = np.array([[0.0, -1.0], [np.inf, 2.5]], np.float32)
    out = depth_to_m(m)
    assert np.isnan(out[0]).all() and np.isnan(out[1, 0]) and out[1, 1] == np.float32(2.5)
    assert m[0, 0] == 0.0  # a copy unless inplace
    assert depth_to_m(m, inplace=True) is m
    with pytest.raises(TypeError, match="`depth` must be"):
        depth_to_m(np.zeros(3, bool))


def test_depth_messages_decode_to_metres_and_other_encodings_are_refused():
    np.testing.assert_allclose(decode_depth_m(_msg(np.full((2, 3), 2500, np.uint16), "16UC1")), 2.5)
    np.testing.assert_allclose(decode_depth_m(_msg(np.full((2, 3), 1.25, np.float32), "32FC1")), 1.25)
    with pytest.raises(ImageDecodeError, match="`sparse_depth` must be 16UC1/mono16 .* got rgb8"):
        decode_depth_m(_msg(np.zeros((2, 3, 3), np.uint8), "rgb8"), name="sparse_depth")


def test_sparse_reference_matches_by_stamp_and_reports_each_problem():
    ref = SparseReference()
    depth, problem = ref.lookup(10.0, (4, 6), 0.05, 10_000)
    assert depth is None and problem.kind == "sparse_depth_unsynced"
    sparse = np.full((4, 6), np.nan, np.float32)
    sparse[1, 2] = 3.0
    assert ref.add(_msg(sparse, "32FC1", 10.0), 10_000) is None
    assert ref.add(_msg(sparse * 2, "32FC1", 10.5), 10_000) is None
    depth, problem = ref.lookup(10.01, (4, 6), 0.05, 10_000)
    assert problem is None and depth[1, 2] == 3.0 and np.isnan(depth).sum() == 23
    assert ref.lookup(10.49, (4, 6), 0.05, 10_000)[0][1, 2] == 6.0  # the nearer message
    assert ref.lookup(10.2, (4, 6), 0.05, 10_000)[1].kind == "sparse_depth_unsynced"
    # twice the size, same aspect: moved onto the output grid without interpolation
    big = ref.lookup(10.0, (8, 12), 0.05, 10_000)[0]
    assert np.count_nonzero(np.isfinite(big)) == 1 and big[3, 5] == 3.0
    assert ref.lookup(10.0, (4, 4), 0.05, 10_000)[1].kind == "sparse_depth_size"
    assert ref.add(_msg(sparse, "32FC1", 11.0), 10).kind == "sparse_depth_decode"  # too large, by header
    ref.add(_msg(np.zeros((4, 6), np.uint16), "16UC1", 12.0), 10_000)
    assert ref.lookup(12.0, (4, 6), 0.05, 10_000)[1].kind == "sparse_depth_empty"
    ref.add(_msg(np.zeros((4, 6, 3), np.uint8), "rgb8", 13.0), 10_000)
    assert ref.lookup(13.0, (4, 6), 0.05, 10_000)[1].kind == "sparse_depth_decode"


def test_rescale_keeps_only_valid_points():
    sparse = np.array([[1.0, np.nan], [-1.0, 2.0]], np.float32)
    out = rescale_sparse(sparse, (4, 4))
    # each source pixel lands on the output pixel under its centre: (0, 0) -> (1, 1), (1, 1) -> (3, 3)
    assert out[1, 1] == 1.0 and out[3, 3] == 2.0 and np.count_nonzero(np.isfinite(out)) == 2
