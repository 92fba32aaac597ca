import numpy as np
import pytest
import torch

from affectmae.errors import AffectMAEError
from affectmae.segments import (
    OverlapMerger,
    Segment,
    make_segments,
    merge_windows,
    pad_segment,
    segment_starts,
    window_weights,
)


@pytest.mark.parametrize(
    "n, window, stride, expected",
    [
        (700, 300, 200, [0, 200, 400]),
        (650, 300, 200, [0, 200, 350]),
        (300, 300, 200, [0]),
        (301, 300, 200, [0, 1]),
        (120, 300, 200, [0]),
        (1, 300, 200, [0]),
        (10, 4, 4, [0, 4, 6]),
        (10, 4, 3, [0, 3, 6]),
        (500, 300, 200, [0, 200]),
    ],
)
def test_segment_starts_hand_cases(n, window, stride, expected):
    assert segment_starts(n, window, stride) == expected


def test_every_frame_covered_and_no_window_past_end():
    for window in (1, 2, 5, 7, 300):
        for stride in sorted({1, max(1, window // 2), window}):
            for n in list(range(1, 3 * window + 3)) + [window - 1, window, window + 1, 10 * window + 13]:
                if n <= 0:
                    continue
                starts = segment_starts(n, window, stride)
                covered = np.zeros(n, dtype=int)
                for s in starts:
                    covered[s : s + window] += 1
                    assert s + window <= max(n, window)  # only videos shorter than the window are padded
                assert covered.min() >= 1, (n, window, stride)
                assert starts == sorted(set(starts))


@pytest.mark.parametrize("args", [(0,), (-3,), (10, 0, 1), (10, 5, 0), (10, 4, 5)])
def test_segment_starts_rejects_bad_arguments(args):
    with pytest.raises(AffectMAEError):
        segment_starts(*args)


def test_make_segments_lengths_and_names():
    segs = make_segments({"a": 650, "b": 120}, window=300, stride=200)
    assert segs == [
        Segment("a", 0, 300),
        Segment("a", 200, 300),
        Segment("a", 350, 300),
        Segment("b", 0, 120),
    ]
    assert segs[-1].stop == 120
    assert make_segments([5, 2], window=4, stride=2) == [Segment(0, 0, 4), Segment(0, 1, 4), Segment(1, 0, 2)]
    with pytest.raises(AffectMAEError, match="video 'x'"):
        make_segments({"x": 0})


def test_pad_segment_numpy_and_torch():
    x = np.arange(6, dtype=np.float32).reshape(3, 2) + 1
    padded, mask = pad_segment(x, 5)
    assert padded.shape == (5, 2) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[3:], 0)
    np.testing.assert_array_equal(padded[:3], x)
    assert mask.tolist() == [True, True, True, False, False]
    t_padded, t_mask = pad_segment(torch.ones(2, 3, dtype=torch.float16), 4)
    assert t_padded.shape == (4, 3) and t_padded.dtype == torch.float16
    assert t_mask.dtype == torch.bool and t_mask.tolist() == [True, True, False, False]
    with pytest.raises(AffectMAEError, match="6 frames to a window of 5"):
        pad_segment(np.zeros((6, 1)), 5)


def test_window_weights_center_is_triangular():
    assert window_weights(5, "center").tolist() == [1, 2, 3, 2, 1]
    assert window_weights(4, "center").tolist() == [1, 2, 2, 1]
    assert window_weights(3, "mean").tolist() == [1, 1, 1]
    with pytest.raises(AffectMAEError, match="unknown weighting"):
        window_weights(3, "hann")


@pytest.mark.parametrize("weighting", ["mean", "center"])
def test_merge_of_constant_predictions_is_constant(weighting):
    n, window, stride = 650, 300, 200
    merger = OverlapMerger(n, 2, weighting)
    for s in segment_starts(n, window, stride):
        merger.add(s, np.tile([0.25, -0.5], (window, 1)))
    out = merger.result()
    assert out.shape == (n, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0], np.float32(0.25))
    np.testing.assert_array_equal(out[:, 1], np.float32(-0.5))


def test_mean_merge_of_two_overlapping_windows_by_hand():
    # n=6, windows of 4 at starts 0 and 2: frames 2,3 are covered twice.
    merger = OverlapMerger(6, 1, "mean")
    merger.add(0, np.array([[1.0], [2.0], [3.0], [4.0]]))
    merger.add(2, np.array([[10.0], [20.0], [30.0], [40.0]]))
    # frame 2: (3 + 10) / 2 = 6.5; frame 3: (4 + 20) / 2 = 12
    np.testing.assert_allclose(merger.result()[:, 0], [1, 2, 6.5, 12, 30, 40])


def test_center_merge_by_hand_and_padding_ignored():
    # window 4 -> weights [1, 2, 2, 1]; second window starts at 2 and runs past the end (n=5): its last row is padding.
    merger = OverlapMerger(5, 1, "center")
    merger.add(0, np.array([[0.0], [0.0], [0.0], [0.0]]))
    merger.add(2, torch.tensor([[6.0], [6.0], [6.0], [999.0]]))
    # frame 2: (2*0 + 1*6) / 3 = 2; frame 3: (1*0 + 2*6) / 3 = 4; frame 4: 6 (only window 2, weight 2)
    np.testing.assert_allclose(merger.result()[:, 0], [0, 0, 2, 4, 6])


def test_uncovered_frames_raise():
    merger = OverlapMerger(10, 1)
    merger.add(0, np.zeros((4, 1)))
    with pytest.raises(AffectMAEError, match="6 of 10 frames were not covered by any window \\(first: 4, 5, 6"):
        merger.result()
    with pytest.raises(AffectMAEError, match="shape \\(L, 1\\)"):
        merger.add(0, np.zeros((4, 3)))


@pytest.mark.parametrize("weighting", ["mean", "center"])
@pytest.mark.parametrize("n", [3, 9, 23])
def test_merge_windows_matches_streaming_merger(weighting, n):
    rng = np.random.default_rng(n)
    window, stride = 8, 5
    starts = segment_starts(n, window, stride)
    preds = rng.normal(size=(len(starts), window, 3)).astype(np.float32)
    merger = OverlapMerger(n, 3, weighting)
    for s, p in zip(starts, preds, strict=True):
        merger.add(s, p)
    np.testing.assert_allclose(merge_windows(n, starts, preds, weighting), merger.result(), rtol=1e-6)


def test_merge_windows_rejects_gaps():
    with pytest.raises(AffectMAEError, match="2 of 10 frames"):
        merge_windows(10, [0, 6], np.zeros((2, 4, 1)))
