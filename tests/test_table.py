"""The per-frame table of ``analyze``: frames between and after analysed ones, and the CSV writer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from affectmae.inference.table import build_table, csv_frame, expand_track, read_predictions, write_table


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


def _reference_csv(df: pd.DataFrame, path, names: str) -> bytes:
    """The straightforward writer: pandas' to_csv with float_format, after the same column changes."""
    csv_frame(df, names).to_csv(path, index=False, float_format="%.5g")
    return path.read_bytes()


def _awkward_table() -> pd.DataFrame:
    """Two tracks at stride 2 with a no-face gap (NaN values, <NA> AUs, empty expression), a video name that
    needs quoting, and values that %.5g writes in exponent form (1e-07, and 99999.5 rounded up to 1e+05)."""
    rng = np.random.default_rng(3)
    frames = np.r_[0:40:2, 50:80:2]
    det_frames = np.concatenate([frames, frames[:12]])
    det_ids = np.repeat([0, 1], [len(frames), 12])
    n = len(det_frames)
    boxes = np.sort(rng.uniform(0, 640, (n, 4)), axis=1).astype(np.float32)
    boxes[0] = [1e-7, -0.0, 99999.5, 123456.7]
    landmarks = rng.uniform(0, 640, (n, 5, 2)).astype(np.float32)
    preds = {"va": rng.uniform(-1, 1, (n, 2)).astype(np.float32), "expr": rng.dirichlet(np.ones(8), n).astype(np.float32),
             "au": rng.uniform(0, 1, (n, 12)).astype(np.float32)}
    preds["va"][3] = [np.float32(1 / 3), np.float32(-2e-5)]
    return build_table(det_frames, det_ids, boxes, rng.uniform(0.5, 1, n).astype(np.float32), landmarks, preds,
                       np.arange(81) / 29.97, 2, None, input_name='clips/"day 1", cam\n2.mp4', face_ids={0: 0, 1: 3})


@pytest.mark.parametrize("names", ["affectmae", "openface"])
def test_write_table_gives_the_bytes_of_pandas_to_csv(tmp_path, names):
    df = _awkward_table()
    assert (~df["face_detected"]).sum() == 11 and df["valence"].isna().sum() == 11 and df["AU1"].isna().sum() == 11
    written = write_table(df, tmp_path / "t.csv", names).read_bytes()
    assert written == _reference_csv(df, tmp_path / "ref.csv", names)
    assert b'"clips/""day 1"", cam\n2.mp4"' in written and b",1e-07,0,1e+05,1.2346e+05," in written
    back = read_predictions(tmp_path / "t.csv")  # read back (its text columns as pandas reads them) and again
    assert write_table(back, tmp_path / "again.csv", names).read_bytes() == written
    texts = ["plain", " spaced ", "line\nbreak", "carriage\rreturn", 'a "quote"', "a,comma", "", None, "é"]
    other = df.assign(input=pd.Series([texts[i % len(texts)] for i in range(len(df))], dtype="string"),
                      extra=pd.Categorical(["a"] * len(df)))  # another kind of column: pandas writes that table
    assert write_table(other.drop(columns="extra"), tmp_path / "s.csv", names).read_bytes() == _reference_csv(
        other.drop(columns="extra"), tmp_path / "r.csv", names)
    assert write_table(other, tmp_path / "o.csv", names).read_bytes() == _reference_csv(other, tmp_path / "r.csv", names)
