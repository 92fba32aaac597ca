"""`affectmae live` and `analyze --causal`: the streaming temporal model against the whole-sequence forward,
causality end to end, every kind of source without a camera (file at its own rate, ffmpeg-style pipes on
standard input, a stream served on the loopback address), dropped frames, and bad sources."""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import subprocess
import sys
import threading
import time

import av
import numpy as np
import pandas as pd
import pytest
import torch

from affectmae.cli import main
from affectmae.inference.table import read_predictions
from affectmae.synth.video import make_synthetic_video

pytest.importorskip("yuface")

N, FPS = 36, 25
TASKS = ["va", "expr", "au"]


def _model_dir(root, streaming: bool):
    from affectmae.models.temporal import TemporalConfig, TemporalModel, save_temporal
    from affectmae.models.vit import build_encoder, save_encoder

    torch.manual_seed(0)
    root.mkdir(parents=True)
    save_encoder(build_encoder("tiny", img_size=32, embed_dim=48, depth=1, num_heads=2), root / "encoder.safetensors")
    cfg = TemporalConfig(input_dim=48, tasks=TASKS, tcn_channels=[16, 16], transformer_layers=2, transformer_heads=2,
                         transformer_ff=32, head_hidden=16, dropout=0.0, causal=streaming, history=6 if streaming else 0,
                         person_norm=streaming)
    save_temporal(root / "temporal.safetensors", TemporalModel(cfg), {"tasks": TASKS, "window": 6, "stride": 3})
    (root / "affectmae_model.json").write_text(json.dumps({
        "format_version": 1, "affectmae_version": "test", "encoder": "encoder.safetensors",
        "heads": dict.fromkeys(TASKS, "temporal.safetensors")}))
    return root


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    video = make_synthetic_video(root / "two.mp4", n_frames=N, n_faces=2, size=(320, 180), fps=FPS, seed=2, cut_at=24,
                                 no_face=(10, 14)).path
    return root, _model_dir(root / "model", True), video


@pytest.fixture(scope="module")
def offline(work):
    """`analyze --causal` on the clip: the reference the live rows must equal."""
    root, model, video = work
    assert main(["analyze", str(video), "--causal", "--model", str(model), "-o", str(root / "causal"), "--no-plots"]) == 0
    return root / "causal" / "two.csv"


def _live(args, stdin=None, monkeypatch=None) -> int:
    """``affectmae live ARGS`` in this process; ``stdin``: a binary file it reads as standard input."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stdin))
    return main(["live", *map(str, args)])


def _last_error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_stream_equals_the_whole_sequence_forward_and_never_looks_ahead():
    from affectmae.models.causal_stream import predict_causal
    from affectmae.models.temporal import TemporalConfig, TemporalModel, causal_reference, postprocess

    torch.manual_seed(1)
    cfg = TemporalConfig(input_dim=12, tasks=TASKS, tcn_channels=[16, 8], transformer_layers=2, transformer_heads=2,
                         transformer_ff=16, head_hidden=8, dropout=0.0, causal=True, history=7, person_norm=True,
                         missing_embedding=True)
    model = TemporalModel(cfg).eval()
    torch.nn.init.normal_(model.missing)
    x = np.random.default_rng(0).normal(size=(40, 12)).astype(np.float32)
    present = np.random.default_rng(1).random(40) > 0.3
    reference = torch.from_numpy(causal_reference(x, present))[None]  # (1, 40, 12)
    with torch.no_grad():  # the ordinary forward over all 40 frames: band mask of 7 frames, per-frame reference
        full = model(torch.from_numpy(x)[None], torch.from_numpy(present)[None], None, reference)
    for chunk in (1, 5, 40):
        out = predict_causal(model, x, present, chunk=chunk)
        for task in TASKS:
            np.testing.assert_allclose(out[task], postprocess(task, full[task])[0].numpy(), atol=2e-6)
    changed = x.copy()
    changed[25:] += 3.0  # the future of frame 24
    after = predict_causal(model, changed, present, chunk=3)
    base = predict_causal(model, x, present, chunk=3)
    np.testing.assert_array_equal(after["va"][:25], base["va"][:25])
    assert np.abs(after["va"][25:] - base["va"][25:]).min(axis=1).max() > 1e-3


def test_causal_reference_is_the_running_mean_of_frames_with_a_face():
    from affectmae.models.temporal import causal_reference

    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    present = np.array([False, True, False, True, True, False])
    want = [x[:1].mean(0), x[1], x[1], x[[1, 3]].mean(0), x[[1, 3, 4]].mean(0), x[[1, 3, 4]].mean(0)]
    np.testing.assert_allclose(causal_reference(x, present), np.stack(want))


def test_live_on_a_file_writes_the_rows_of_analyze_causal(work, offline):
    root, model, video = work
    out, summary = root / "live.csv", root / "live_summary.json"
    assert _live([video, "--model", model, "--no-drop", "-o", out, "--summary", summary, "--video-out", root / "ov.mp4"]) == 0
    assert out.read_bytes() == offline.read_bytes()  # same rows, same text as analyze's table writer
    df = read_predictions(out)
    assert list(df.groupby("frame").size().index) == list(range(N)) and df["analyzed"].all()
    faces = df[df["face_detected"]]
    assert set(faces[faces["frame"] < 24]["face_id"]) == {0, 1} and set(faces[faces["frame"] >= 24]["face_id"]) == {2, 3}
    assert list(df[~df["face_detected"]]["frame"]) == [10, 11, 12, 13]
    np.testing.assert_allclose(df["time_s"], df["frame"] / FPS, atol=1e-6)
    s = json.loads(summary.read_text())
    assert (s["frames"], s["frames_analyzed"], s["frames_dropped"], s["rows"], s["ended"]) == (N, N, 0, len(df), "end of stream")
    assert 0 < s["latency_ms"]["p50"] <= s["latency_ms"]["p95"] <= s["latency_ms"]["max"]
    with av.open(str(root / "ov.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == N


def test_rows_of_the_first_frames_do_not_depend_on_later_frames(work, offline, capsys):
    from affectmae.inference.pipeline import Analyzer

    _, model, video = work
    with Analyzer(model) as analyzer:
        rows = list(analyzer.stream(video, drop=False, max_frames=20))
    capsys.readouterr()
    assert _live([video, "--model", model, "--no-drop", "--max-frames", "20"]) == 0  # JSON lines on standard output
    jsonl = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    full = read_predictions(offline)
    head = full[full["frame"] < 20].reset_index(drop=True)
    assert len(rows) == len(head) == len(jsonl)
    for col in ("valence", "arousal", "expr_Happiness", "AU12_prob", "x1"):
        np.testing.assert_allclose([r[col] for r in rows], head[col], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose([np.nan if r[col] is None else r[col] for r in jsonl], head[col], rtol=1e-4, atol=1e-6)
    assert [r["face_id"] for r in jsonl] == head["face_id"].tolist()


def test_a_file_at_its_own_rate_takes_its_duration(work, offline):
    root, model, video = work
    out, summary = root / "rt.jsonl", root / "rt_summary.json"
    started = time.perf_counter()
    assert _live([video, "--model", model, "--realtime", "-o", out, "--summary", summary, "--queue", "8"]) == 0
    assert time.perf_counter() - started >= (N - 1) / FPS
    s = json.loads(summary.read_text())
    assert s["frames"] == N and s["stream_seconds"] == pytest.approx((N - 1) / FPS, abs=1e-3)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted({r["frame"] for r in rows}) == list(range(N))
    analysed = [r for r in rows if r["analyzed"]]
    ref = read_predictions(offline)
    if s["frames_dropped"] == 0:  # nothing dropped on this machine: the very rows of analyze --causal
        np.testing.assert_allclose([r["valence"] or np.nan for r in analysed], ref["valence"], rtol=1e-4, atol=1e-6)


def test_drops_keep_frame_order_and_timestamps(work):
    from affectmae.inference.pipeline import Analyzer

    _, model, video = work
    with Analyzer(model) as analyzer:
        live = analyzer.stream(video, queue=1)  # decoding outruns the analysis: frames must be dropped
        rows = list(live)
        summary = live.summary()
    frames = pd.DataFrame(rows).groupby("frame").first()
    assert list(frames.index) == list(range(N))
    np.testing.assert_allclose(frames["time_s"], np.arange(N) / FPS, atol=1e-6)
    dropped = frames[~frames["analyzed"]]
    assert len(dropped) == summary["frames_dropped"] > 0
    assert summary["frames_analyzed"] + summary["frames_dropped"] == N
    assert (~dropped["face_detected"]).all() and (dropped["face_id"] == -1).all() and dropped["valence"].isna().all()
    assert len(summary["seconds_per_stage"]) == 5 and summary["latency_ms"]["max"] > 0


def _raw_frames(video) -> list[np.ndarray]:
    with av.open(str(video)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_ffmpeg_style_pipes_on_standard_input(work, offline, monkeypatch, capsys):
    root, model, video = work
    remux = ("import av, sys\n"
             "src = av.open(sys.argv[1]); dst = av.open(sys.stdout.buffer, 'w', format='matroska')\n"
             "s = dst.add_stream_from_template(src.streams.video[0])\n"
             "for p in src.demux(src.streams.video[0]):\n"
             "    if p.dts is not None: p.stream = s; dst.mux(p)\n"
             "dst.close()\n")
    writer = subprocess.Popen([sys.executable, "-c", remux, str(video)], stdout=subprocess.PIPE)  # as ffmpeg ... -f matroska -
    r = subprocess.run([sys.executable, "-m", "affectmae", "live", "-", "--model", str(model), "--no-drop",
                        "--input-format", "matroska", "-o", str(root / "pipe.csv")], stdin=writer.stdout,
                       capture_output=True, timeout=120)
    writer.wait()
    assert r.returncode == 0, r.stderr.decode()
    ref, got = read_predictions(offline), read_predictions(root / "pipe.csv")
    assert (got["input"] == "standard input").all()
    pd.testing.assert_frame_equal(got.drop(columns="input"), ref.drop(columns="input"), rtol=1e-4, atol=1e-6)

    raw = b"".join(f.tobytes() for f in _raw_frames(video))
    assert _live(["-", "--model", model, "--no-drop", "--raw-size", "320x180", "--fps", "25", "-o", root / "raw.csv"],
                 io.BytesIO(raw), monkeypatch) == 0
    got = read_predictions(root / "raw.csv")
    np.testing.assert_allclose(got["valence"], ref["valence"], rtol=0.05, atol=0.02)  # same frames, not re-encoded
    assert got["face_id"].tolist() == ref["face_id"].tolist()

    cut = raw[: 12 * 320 * 180 * 3 + 5000]  # the stream stops inside frame 12
    capsys.readouterr()
    assert _live(["-", "--model", model, "--no-drop", "--raw-size", "320x180", "-o", root / "cut.csv"], io.BytesIO(cut),
                 monkeypatch) == 2
    assert _last_error(capsys) == (
        "affectmae live: error: standard input ended inside frame 12 (5000 of 172800 bytes of a 320x180 rgb24 frame)")
    got = read_predictions(root / "cut.csv")  # the rows written before are whole
    assert list(got.groupby("frame").size().index) == list(range(12))
    pd.testing.assert_frame_equal(got.drop(columns="input"), read_predictions(root / "raw.csv").iloc[: len(got)].drop(
        columns="input"))


def test_a_stream_served_on_the_loopback_address(work, offline):
    root, model, video = work
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/two.mp4"
        assert main(["live", url, "--model", str(model), "--no-drop", "-o", str(root / "http.csv")]) == 0
    finally:
        server.shutdown()
    ref, got = read_predictions(offline), read_predictions(root / "http.csv")
    assert (got["input"] == url).all()
    pd.testing.assert_frame_equal(got.drop(columns="input"), ref.drop(columns="input"), rtol=1e-4, atol=1e-6)


def test_a_stream_that_stops_delivering_times_out(work, monkeypatch, capsys):
    root, model, video = work
    read_end, write_end = os.pipe()  # 3 frames, then the writer keeps the pipe open and sends nothing
    data = memoryview(_raw_frames(video)[0].tobytes() * 3)

    def feed():
        sent = 0
        while sent < len(data):
            sent += os.write(write_end, data[sent:])

    threading.Thread(target=feed, daemon=True).start()
    try:
        code = _live(["-", "--model", model, "--raw-size", "320x180", "--timeout", "2", "-o", root / "stall.csv",
                      "--summary", root / "stall.json"], os.fdopen(read_end, "rb", buffering=0), monkeypatch)
    finally:
        os.close(write_end)  # the reader thread, still waiting in its read, sees the end and stops
    assert code == 2
    assert _last_error(capsys) == (
        "affectmae live: error: standard input: no frame for 2 s; the stream stopped delivering")
    assert len(read_predictions(root / "stall.csv")) == 6  # 3 frames x 2 faces, written before the stall
    assert json.loads((root / "stall.json").read_text())["ended"] == "stalled"


def test_bad_sources_are_one_line(work, capsys, tmp_path, monkeypatch):
    root, model, _ = work
    assert main(["live", "/dev/video97", "--model", str(model)]) == 2
    assert capsys.readouterr().err.strip().startswith("affectmae live: error: camera /dev/video97: no such device")
    assert main(["live", "http://127.0.0.1:9/none.mp4", "--model", str(model), "--timeout", "2"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "affectmae live: error: http://127.0.0.1:9/none.mp4: cannot open the stream: Connection refused")
    two_way = _model_dir(tmp_path / "two_way", False)
    for args in (["live", str(root / "two.mp4")], ["analyze", str(root / "two.mp4"), "--causal", "-o", str(tmp_path / "o")]):
        assert main([*args, "--model", str(two_way)]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.endswith("temporal.safetensors looks both ways (or counts window positions); live and analyze "
                            "--causal need a model trained with `affectmae train ... causal=true`")
    assert _live(["-", "--model", model], io.BytesIO(bytes(range(256)) * 400), monkeypatch) == 2
    assert _last_error(capsys) == (
        "affectmae live: error: standard input: cannot open the stream: Invalid data found when processing input")


def _serial_rows(analyzer, name, frames) -> list[dict]:
    """The per-frame analysis run one frame after the other in this thread (no stages side by side), at the one
    torch thread a stream runs with: the encoder's GEMMs round differently at another thread count."""
    from affectmae.inference.live_frames import FrameAnalyzer

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = FrameAnalyzer(analyzer, name)
        return [row for frame in frames for row in serial.rows(frame)]
    finally:
        torch.set_num_threads(before)


def test_the_two_stages_give_the_rows_of_the_serial_loop(work):
    from affectmae.inference.pipeline import Analyzer
    from affectmae.media.video import VideoReader

    _, model, video = work
    with Analyzer(model) as analyzer:
        live = analyzer.stream(video, drop=False)
        rows = list(live)
        summary = live.summary()
        reader = VideoReader(video)
        serial = _serial_rows(analyzer, str(video), reader.frames())
        reader.close()
    assert len(rows) == len(serial) == summary["rows"] == 68  # 32 frames with 2 faces, 4 without
    pd.testing.assert_frame_equal(pd.DataFrame(rows), pd.DataFrame(serial), check_exact=True)
    assert summary["frames_dropped"] == 0 and len(live.stats.latencies) == N
    assert summary["busy_ms_per_frame"]["stage1"] > 0 and summary["busy_ms_per_frame"]["stage2"] > 0


class _GatedSource:
    """Frames 0-9 of the clip handed out against the pipeline's state, so that the drops are certain: frame 1
    once stage 2 holds frame 0, frame 2 when stage 1 has handed frame 1 on, and 0.1 s later frames 3-9 at
    once. Stage 1 waits for room before it takes a frame, so frame 2 stays at the input, and the input queue
    of 2 keeps 8 and 9 and drops 2-7."""

    name, fps, error = "gated", float(FPS), None

    def __init__(self, rgbs, stage_two_holds, release):
        self.rgbs, self.holds, self.release, self.live = rgbs, stage_two_holds, release, None

    @staticmethod
    def _until(ready) -> None:
        deadline = time.monotonic() + 30
        while not ready():
            assert time.monotonic() < deadline, "the pipeline did not reach the expected state"
            time.sleep(0.002)

    def frames(self):
        from affectmae.media.video import Frame

        def frame(k):
            return Frame(k, k / FPS, self.rgbs[k])

        yield frame(0)
        self._until(self.holds.is_set)
        yield frame(1)
        self._until(lambda: len(self.live._handoff.items) == 1)
        yield frame(2)
        time.sleep(0.1)  # time for stage 1 to take frame 2, were it to take a frame without room for it
        for k in range(3, 10):
            yield frame(k)
        self.release.set()

    def close(self) -> None:
        pass


def test_a_slow_stage_two_drops_frames_at_the_input_only(work, monkeypatch):
    from affectmae.inference.live_frames import FrameAnalyzer
    from affectmae.inference.pipeline import Analyzer
    from affectmae.media.video import Frame

    _, model, video = work
    holds, release, prepared = threading.Event(), threading.Event(), []
    prepare, finish = FrameAnalyzer.prepare, FrameAnalyzer.finish

    def recorded_prepare(self, frame):
        prepared.append(frame.index)
        return prepare(self, frame)

    def slow_finish(self, faces):
        if faces.frame.index == 0:  # stage 2 held on frame 0 while frames 1-9 arrive, then slow
            holds.set()
            assert release.wait(30)
            time.sleep(0.05)
        return finish(self, faces)

    rgbs = _raw_frames(video)[:10]
    source = _GatedSource(rgbs, holds, release)
    with Analyzer(model) as analyzer:
        live = analyzer.stream(source, queue=2)
        source.live = live
        monkeypatch.setattr(FrameAnalyzer, "prepare", recorded_prepare)
        monkeypatch.setattr(FrameAnalyzer, "finish", slow_finish)
        rows = list(live)
        summary = live.summary()
        monkeypatch.undo()
        serial = _serial_rows(analyzer, "gated", [Frame(k, k / FPS, rgbs[k]) for k in (0, 1, 8, 9)])
    assert prepared == [0, 1, 8, 9]  # stage 1 saw only the frames kept at the input: none dropped after it
    assert [r["frame"] for r in rows] == [0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 8, 9, 9]
    dropped = [r for r in rows if not r["analyzed"]]
    assert [r["frame"] for r in dropped] == [2, 3, 4, 5, 6, 7]
    assert [r["time_s"] for r in dropped] == [k / FPS for k in (2, 3, 4, 5, 6, 7)]
    assert all(r["face_id"] == -1 and not r["face_detected"] and np.isnan(r["valence"]) for r in dropped)
    pd.testing.assert_frame_equal(pd.DataFrame([r for r in rows if r["analyzed"]]), pd.DataFrame(serial),
                                  check_exact=True)  # frame 8 follows frame 1 as in the serial loop
    assert (summary["frames"], summary["frames_analyzed"], summary["frames_dropped"], summary["rows"]) == (10, 4, 6, 14)
    assert summary["dropped_share"] == 0.6 and summary["ended"] == "end of stream"
    latencies = live.stats.latencies
    assert len(latencies) == 4 and min(latencies[:2]) >= 0.05  # frames 0 and 1 waited for stage 2's frame 0
