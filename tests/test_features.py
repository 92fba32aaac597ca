"""Feature store: `affectmae extract` on a hand-made Aff-Wild2 folder, missing-frame filling, resume, errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from affectmae.cli import main
from affectmae.errors import AffectMAEError
from affectmae.features.extract import ExtractConfig, extract_features
from affectmae.features.store import FeatureStore, fill_missing
from affectmae.models.preprocess import preprocess_frames
from affectmae.models.vit import build_encoder, load_encoder, save_encoder


def _write_dataset(root, lengths, missing=(), corrupt=(), extra_images=()):
    """Frames (16x16 JPEGs with distinct colours) + VA annotations (Train_Set) for videos of given lengths."""
    rng = np.random.default_rng(0)
    for video, n in lengths.items():
        folder = root / "cropped_aligned" / video
        folder.mkdir(parents=True)
        for k in range(n + (1 if video in extra_images else 0)):
            if (video, k) in missing:
                continue
            path = folder / f"{k + 1:05d}.jpg"
            if (video, k) in corrupt:
                path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
                continue
            img = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(img).save(path, quality=95)
        ann = root / "VA_Estimation_Challenge" / "Train_Set"
        ann.mkdir(parents=True, exist_ok=True)
        lines = ["valence,arousal"] + [f"{0.1 * (k % 5):.2f},{-0.1 * (k % 3):.2f}" for k in range(n)]
        (ann / f"{video}.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture()
def encoder_path(tmp_path):
    torch.manual_seed(0)
    enc = build_encoder("tiny", img_size=16, patch_size=8, embed_dim=24, depth=1, num_heads=2)
    path = tmp_path / "encoder.safetensors"
    save_encoder(enc, path)
    return path


def test_fill_missing_linear_nearest_and_edges():
    feats = np.zeros((7, 2), np.float32)
    present = np.array([False, True, False, False, True, False, False])
    feats[1] = [1.0, 10.0]
    feats[4] = [4.0, 40.0]
    lin = fill_missing(feats.copy(), present, "linear")
    np.testing.assert_allclose(lin[:, 0], [1, 1, 2, 3, 4, 4, 4])
    np.testing.assert_allclose(lin[:, 1], [10, 10, 20, 30, 40, 40, 40])
    near = fill_missing(feats.copy(), present, "nearest")
    np.testing.assert_allclose(near[:, 0], [1, 1, 1, 4, 4, 4, 4])
    zero = fill_missing(feats.copy(), present, "zero")
    np.testing.assert_allclose(zero[:, 0], [0, 1, 0, 0, 4, 0, 0])
    # chunked filling gives the same result as one pass
    np.testing.assert_allclose(fill_missing(feats.copy(), present, "linear", chunk=1), lin)


def test_extract_matches_encoder_and_marks_missing(tmp_path, encoder_path):
    lengths = {"vid_a": 5, "vid_b": 3}
    # vid_a frame 2 has no image; vid_a has the known off-by-one the other way (no image for the last line):
    # frame 4 missing too. vid_b frame 1 is a corrupt JPEG (counted, treated as missing).
    _write_dataset(tmp_path, lengths, missing={("vid_a", 2), ("vid_a", 4)}, corrupt={("vid_b", 1)})
    out = tmp_path / "feats"
    rc = main(["extract", "--encoder", str(encoder_path), "--frames", str(tmp_path), "--data", str(tmp_path),
               "-o", str(out), "--batch-size", "2", "--missing", "linear"])
    assert rc == 0
    store = FeatureStore(out)
    assert store.videos() == ["vid_a", "vid_b"]
    assert store.dim == 24
    meta = json.loads((out / "features.json").read_text())
    assert meta["dtype"] == "float16" and meta["encoder_meta"]["kind"] == "encoder"
    feats, present = store.load("vid_a")
    assert feats.shape == (5, 24) and feats.dtype == np.float16
    assert present.tolist() == [True, True, False, True, False]
    # independent reference: the encoder on the decoded JPEGs, one by one
    enc = load_encoder(encoder_path).eval()
    for k in (0, 1, 3):
        img = np.array(Image.open(tmp_path / "cropped_aligned" / "vid_a" / f"{k + 1:05d}.jpg").convert("RGB"))
        with torch.no_grad():
            ref = enc.forward_features(preprocess_frames(img[None], 16))["pooled"][0].numpy()
        np.testing.assert_allclose(feats[k].astype(np.float32), ref, rtol=2e-2, atol=2e-3)
    np.testing.assert_allclose(feats[2].astype(np.float32), (feats[1].astype(np.float32) + feats[3]) / 2, atol=2e-3)
    np.testing.assert_array_equal(feats[4], feats[3])  # after the last image: copy of the last present frame
    _, present_b = store.load("vid_b")
    assert present_b.tolist() == [True, False, True]


def test_extract_resumes_and_refuses_another_encoder(tmp_path, encoder_path, caplog):
    _write_dataset(tmp_path, {"v1": 2, "v2": 2})
    out = tmp_path / "feats"

    cfg = ExtractConfig(encoder=str(encoder_path), frames=str(tmp_path), out=str(out), batch_size=4)
    first = extract_features(cfg)
    assert first["extracted"] == 2 and first["frames"] == 4 and first["missing"] == 0
    (out / "v2.npy").unlink()  # as if interrupted before v2 was renamed into place
    stamp = (out / "v1.npy").stat().st_mtime_ns
    second = extract_features(cfg)
    assert second["skipped_done"] == 1 and second["extracted"] == 1
    assert (out / "v1.npy").stat().st_mtime_ns == stamp
    assert not list(out.glob(".*tmp"))
    other = tmp_path / "other.safetensors"
    save_encoder(build_encoder("tiny", img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2), other)
    with pytest.raises(AffectMAEError, match="already holds features of another encoder"):
        extract_features(ExtractConfig(encoder=str(other), frames=str(tmp_path), out=str(out)))


def test_extract_frame_count_from_folder_and_errors(tmp_path, encoder_path, capsys):
    _write_dataset(tmp_path, {"t1": 4}, missing={("t1", 1)})
    out = tmp_path / "feats"
    # no annotations: frame count = largest frame number in the folder
    assert main(["extract", "--encoder", str(encoder_path), "--frames", str(tmp_path / "cropped_aligned"),
                 "-o", str(out)]) == 0
    feats, present = FeatureStore(out).load("t1")
    assert feats.shape[0] == 4 and present.tolist() == [True, False, True, True]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["extract", "--encoder", str(encoder_path), "--frames", str(empty), "-o", str(tmp_path / "f2")]) == 2
    assert "no videos to extract" in capsys.readouterr().err
    with pytest.raises(AffectMAEError, match="not a features folder"):
        FeatureStore(tmp_path / "nowhere")


def test_extract_stops_at_the_annotation_length(tmp_path, encoder_path, caplog):
    """Aff-Wild2 folders can hold images past the last annotated frame: the annotation sets the frame count, and
    the extra image is neither encoded nor stored."""
    _write_dataset(tmp_path, {"long": 4, "plain": 3}, extra_images={"long"})
    assert (tmp_path / "cropped_aligned" / "long" / "00005.jpg").is_file()
    out = tmp_path / "feats"
    with caplog.at_level("WARNING", logger="affectmae.features.frames"):
        summary = extract_features(ExtractConfig(encoder=str(encoder_path), frames=str(tmp_path / "cropped_aligned"),
                                                 annotations=str(tmp_path), out=str(out), batch_size=3))
    assert "video long: frame images up to 5 but the annotation has 4 lines; images past 4 are ignored" in caplog.messages
    assert (summary["frames"], summary["missing"]) == (7, 0)
    feats, present = FeatureStore(out).load("long")
    assert feats.shape == (4, 24) and present.tolist() == [True] * 4
    enc = load_encoder(encoder_path).eval()
    img = np.array(Image.open(tmp_path / "cropped_aligned" / "long" / "00004.jpg").convert("RGB"))
    with torch.no_grad():
        ref = enc.forward_features(preprocess_frames(img[None], 16))["pooled"][0].numpy()
    np.testing.assert_allclose(feats[3].astype(np.float32), ref, rtol=2e-2, atol=2e-3)  # row 3 is image 4


def test_npy_rows_reads_and_writes_like_numpy(tmp_path):
    from affectmae.features.store import NpyRows

    ref = np.arange(40, dtype=np.float16).reshape(10, 4)
    np.save(tmp_path / "a.npy", ref)
    rows = NpyRows(tmp_path / "a.npy", mode="r+")
    assert rows.shape == (10, 4) and rows.dtype == np.float16 and len(rows) == 10
    np.testing.assert_array_equal(rows[3:7], ref[3:7])
    np.testing.assert_array_equal(rows[-1], ref[-1])
    rows[2:4] = 7
    rows.close()
    expected = ref.copy()
    expected[2:4] = 7
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), expected)
    with pytest.raises(TypeError, match="int or a contiguous slice"):
        NpyRows(tmp_path / "a.npy")[::2]


def test_int8_extract_is_close_to_fp32_and_not_mixed_with_it(tmp_path, encoder_path):
    _write_dataset(tmp_path, {"v1": 12})
    common = ["extract", "--encoder", str(encoder_path), "--frames", str(tmp_path / "cropped_aligned"),
              "--data", str(tmp_path)]
    assert main([*common, "-o", str(tmp_path / "fp32")]) == 0
    assert main([*common, "-o", str(tmp_path / "int8"), "--quantize", "int8"]) == 0
    ref, _ = FeatureStore(tmp_path / "fp32").load("v1")
    q, _ = FeatureStore(tmp_path / "int8").load("v1")
    ref, q = ref.astype(np.float64), q.astype(np.float64)
    cos = (ref * q).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(q, axis=1))
    assert q.shape == ref.shape == (12, 24)
    assert cos.min() > 0.99 and not np.array_equal(ref, q)  # close, but really the quantised model
    assert json.loads((tmp_path / "int8" / "features.json").read_text())["quantize"] == "int8"
    with pytest.raises(AffectMAEError, match="already holds features of another encoder .*quantize int8"):
        extract_features(ExtractConfig(encoder=str(encoder_path), frames=str(tmp_path / "cropped_aligned"),
                                       out=str(tmp_path / "int8"), annotations=str(tmp_path)))


def test_extract_config_file_override_and_unknown_key(tmp_path, encoder_path, capsys):
    import yaml

    _write_dataset(tmp_path, {"c1": 5}, missing={("c1", 2)})
    config = tmp_path / "extract.yaml"
    config.write_text(yaml.safe_dump({"encoder": str(encoder_path), "frames": str(tmp_path / "cropped_aligned"),
                                      "annotations": str(tmp_path), "missing": "zero", "batch_size": 2,
                                      "torch_threads": torch.get_num_threads()}))  # the old name of `threads`
    out = tmp_path / "feats"
    assert main(["extract", "--config", str(config), "-o", str(out), "missing=nearest"]) == 0
    feats, present = FeatureStore(out).load("c1")
    assert present.tolist() == [True, True, False, True, True]
    np.testing.assert_array_equal(feats[2], feats[1])  # nearest (the override), not zeros (the file)
    assert json.loads((out / "features.json").read_text())["missing"] == "nearest"
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["missing"], saved["batch_size"], saved["out"]) == ("nearest", 2, str(out))
    assert saved["threads"] == torch.get_num_threads()
    assert "torch_threads" not in saved
    capsys.readouterr()
    assert main(["extract", "--config", str(config), "-o", str(tmp_path / "f2"), "batchsize=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    known = ", ".join(sorted(f.name for f in dataclasses.fields(ExtractConfig)))
    assert "allow_missing_videos, annotations, batch_size, decode_threads, decoder, device, encoder, frames" in known
    assert err == [f"affectmae extract: error: command line: unknown setting 'batchsize' for ExtractConfig; known: {known}"]
    assert not (tmp_path / "f2").exists()


def test_video_problem_checks_headers_sizes_and_the_mask(tmp_path):
    from affectmae.features.store import video_problem

    np.save(tmp_path / "v.npy", np.ones((5, 4), np.float16))
    np.save(tmp_path / "v.mask.npy", np.ones(5, bool))
    assert video_problem(tmp_path, "v", 4) is None and video_problem(tmp_path, "v", 4, n=5) is None
    assert video_problem(tmp_path, "v", 4, n=6) == (tmp_path / "v.npy", "shape (5, 4), expected (6, 4)")
    assert video_problem(tmp_path, "v", 8) == (tmp_path / "v.npy", "shape (5, 4), expected (N, 8)")
    data = (tmp_path / "v.npy").read_bytes()
    (tmp_path / "v.npy").write_bytes(data[:-3])
    assert video_problem(tmp_path, "v", 4) == (tmp_path / "v.npy", f"truncated: {len(data) - 3} bytes, the header "
                                                                    f"needs {len(data)}")
    (tmp_path / "v.npy").write_bytes(data + b"xx")
    assert video_problem(tmp_path, "v", 4)[1] == f"too long: {len(data) + 2} bytes, the header needs {len(data)}"
    np.save(tmp_path / "v.npy", np.ones((5, 4), np.float32))
    assert video_problem(tmp_path, "v", 4)[1] == "dtype float32, expected float16"
    np.save(tmp_path / "v.npy", np.ones((5, 4), np.float16))
    np.save(tmp_path / "v.mask.npy", np.ones(4, bool))
    assert video_problem(tmp_path, "v", 4) == (tmp_path / "v.mask.npy", "shape (4,), expected (5,)")
    (tmp_path / "v.mask.npy").unlink()
    assert video_problem(tmp_path, "v", 4) == (tmp_path / "v.mask.npy", "missing")
    (tmp_path / "v.npy").write_bytes(b"garbage")
    with pytest.raises(AffectMAEError, match="v.npy: not a .npy file"):
        video_problem(tmp_path, "v", 4)
