"""Streaming decode: indices, timestamps, stride, rotation metadata, truncated/corrupt/missing files;
and the synthetic scene video's ground truth."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from affectmae.data.synthetic_video import make_synthetic_video
from affectmae.data.video import VideoReader, VideoWriter, probe_video, rotate_upright
from affectmae.errors import AffectMAEError, InputFormatError


def _grey_video(path, n=12, size=(64, 48), fps=25, **kw):
    with VideoWriter(path, size, fps=fps, **kw) as writer:
        for k in range(n):
            writer.write(np.full((size[1], size[0], 3), 20 * k, dtype=np.uint8))
    return path


def _noise_video(path, n=40, faststart=False):
    rng = np.random.default_rng(0)
    with VideoWriter(path, (64, 48), fps=25, faststart=faststart) as writer:
        for _ in range(n):
            writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    return path


def test_frames_carry_index_time_and_pixels(tmp_path):
    path = _grey_video(tmp_path / "grey.mp4")
    info = probe_video(path)
    assert (info.width, info.height, info.fps, info.n_frames, info.rotation) == (64, 48, 25.0, 12, 0)
    with VideoReader(path) as reader:
        frames = list(reader.frames())
    assert [f.index for f in frames] == list(range(12))
    np.testing.assert_allclose([f.time_s for f in frames], np.arange(12) / 25, atol=1e-6)
    means = np.array([f.rgb.mean() for f in frames])
    np.testing.assert_allclose(means, 20 * np.arange(12), atol=4)  # lossy codec, limited-range YUV
    assert frames[0].rgb.shape == (48, 64, 3) and frames[0].rgb.dtype == np.uint8


def test_stride_converts_only_every_kth_frame(tmp_path):
    path = _grey_video(tmp_path / "grey.mp4", n=10)
    with VideoReader(path) as reader:
        frames = list(reader.frames(stride=3))
        assert reader.summary()["frames_decoded"] == 10
    assert [f.index for f in frames if f.rgb is not None] == [0, 3, 6, 9]


@pytest.mark.parametrize("rotation, bright_rows", [(90, "bottom"), (270, "top"), (180, "right")])
def test_rotation_metadata_gives_upright_frames(tmp_path, rotation, bright_rows):
    path = tmp_path / f"rot{rotation}.mp4"
    stored = np.zeros((32, 64, 3), dtype=np.uint8)
    stored[:, :16] = 255  # a white band on the left of the stored frame
    with VideoWriter(path, (64, 32), rotation=rotation) as writer:
        for _ in range(3):
            writer.write(stored)
    with VideoReader(path) as reader:
        frame = next(reader.frames()).rgb
        assert reader.info.rotation == rotation
    if rotation == 180:
        assert frame.shape == (32, 64, 3) and frame[:, -8:].mean() > 240 and frame[:, :40].mean() < 15
    else:
        assert frame.shape == (64, 32, 3)
        assert (reader.info.width, reader.info.height) == (32, 64)
        band, rest = (frame[-8:], frame[:40]) if bright_rows == "bottom" else (frame[:8], frame[-40:])
        assert band.mean() > 240 and rest.mean() < 15


def test_rotate_upright_matches_numpy_counter_clockwise():
    a = np.arange(6).reshape(2, 3, 1)
    assert rotate_upright(a, 90)[:, :, 0].tolist() == [[2, 5], [1, 4], [0, 3]]
    assert rotate_upright(a, -90)[:, :, 0].tolist() == np.rot90(a[:, :, 0], -1).tolist()
    assert rotate_upright(a, 0) is a


def test_truncated_stream_keeps_decoded_frames_and_warns(tmp_path, caplog):
    path = _noise_video(tmp_path / "full.mp4", faststart=True)
    cut = tmp_path / "cut.mp4"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING), VideoReader(cut) as reader:
        indices = [f.index for f in reader.frames()]
        summary = reader.summary()
    assert 0 < len(indices) < 40 and indices == list(range(len(indices)))
    assert summary["truncated"] is True and summary["frames_expected"] == 40
    assert "cut.mp4" in caplog.text and "keeping the frames decoded so far" in caplog.text


def test_damaged_packet_is_skipped_and_counted(tmp_path, caplog):
    path = _noise_video(tmp_path / "full.mp4", faststart=True)
    data = bytearray(path.read_bytes())
    start = data.index(b"mdat") + 1000
    data[start : start + 400] = b"\x55" * 400  # scribble over the coded data of an early frame
    bad = tmp_path / "damaged.mp4"
    bad.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING), VideoReader(bad) as reader:
        indices = [f.index for f in reader.frames()]
        summary = reader.summary()
    assert summary["frames_corrupt"] == 1 and indices == list(range(40))
    assert "damaged.mp4" in caplog.text and "skipped or flagged" in caplog.text


def test_mp4_cut_before_its_index_is_a_clear_error(tmp_path):
    path = _noise_video(tmp_path / "full.mp4", faststart=False)  # index (moov) written at the end
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputFormatError, match=r"cut\.mp4: not a readable video.*cut short before its index"):
        VideoReader(cut)


def test_missing_and_non_video_files(tmp_path):
    with pytest.raises(AffectMAEError, match=r"video not found: .*nothere\.mp4"):
        VideoReader(tmp_path / "nothere.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(InputFormatError, match=r"notes\.mp4: not a readable video"):
        VideoReader(text)
    with pytest.raises(AffectMAEError, match="is a directory"):
        VideoReader(tmp_path)


def test_synthetic_video_ground_truth(tmp_path):
    truth = make_synthetic_video(tmp_path / "s.mp4", n_frames=20, n_faces=2, size=(320, 180), seed=3,
                                 cut_at=12, no_face=(5, 8))
    assert truth.boxes.shape == (20, 2, 4) and truth.latent.shape == (20, 2, 14)
    visible = truth.face_visible()
    assert visible[5:8].sum() == 0 and visible[:5].all() and visible[8:].all()
    sides = truth.boxes[visible][:, 2] - truth.boxes[visible][:, 0]
    assert sides.min() >= 58 and sides.max() <= 92  # 120-180 px scaled to a 180 px high frame
    info = probe_video(truth.path)
    assert (info.width, info.height, info.n_frames) == (320, 180, 20)
    assert truth.cut_at == 12 and truth.codec in ("libx264", "mpeg4")
