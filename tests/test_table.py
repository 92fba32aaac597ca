"""The per-frame table of ``analyze``: frames between and after analysed ones, and the CSV writer."""

from __future__ import annotations

import numpy as np

from affectmae.inference.table import expand_track


def test_expand_track_covers_the_frames_after_the_last_analysed_one():
    frames, values = np.array([0, 3, 6]), np.array([[0.0], [3.0], [30.0]])
    out_frames, out_values, analysed = expand_track(frames, values, 3, 8)  # frame 7 ends the video
    assert out_frames.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    np.testing.assert_allclose(out_values[:, 0], [0, 1, 2, 3, 12, 21, 30, 30])
    assert analysed.tolist() == [True, False, False, True, False, False, True, False]
    # the track's last analysed frame is the video's last frame: nothing past it
    assert expand_track(frames, values, 3, 7)[0].tolist() == [0, 1, 2, 3, 4, 5, 6]
    # a track that ends before the video does: the two frames up to the next analysed one, no further
    assert expand_track(np.array([0, 3]), values[:2], 3, 10)[0].tolist() == [0, 1, 2, 3, 4, 5]
