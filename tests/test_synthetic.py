"""Synthetic Aff-Wild2 (`affectmae synth`): layout, formats, determinism, temporal structure, learnability,
the oracle, the CLI, and that the real face detector finds the rendered faces."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from affectmae.cli import main
from affectmae.datasets.affwild2 import FrameIndex
from affectmae.datasets.annotations import load_annotations, read_annotation_file
from affectmae.errors import AffectMAEError
from affectmae.evaluation.metrics import evaluate, expr_metrics
from affectmae.synth.cartoon import render_face
from affectmae.synth.dataset import generate_affwild2, run_synth
from affectmae.synth.latents import (
    LATENT_NAMES,
    PROTOTYPES,
    expression_from_latent,
    labels_from_latents,
    sample_trajectory,
)
from affectmae.synth.oracle import oracle_predictions, oracle_scores
from affectmae.synth.plan import plan_videos
from affectmae.tasks import EXPRESSIONS, SPLITS, TASKS

HEADERS = {
    "va": b"valence,arousal\n",
    "expr": b"Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n",
    "au": b"AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26\n",
}
LINE_FORMAT = {
    "va": re.compile(r"^(-?[01]\.\d{3},-?[01]\.\d{3}|-5,-5)$"),
    "expr": re.compile(r"^([0-7]|-1)$"),
    "au": re.compile(r"^([01](,[01]){11}|-1(,-1){11})$"),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "affwild2"
    summary = generate_affwild2(root, videos=5, frames=100, seed=7, faces=300)
    return root, summary


def _annotation_files(root):
    return sorted((root / "annotations").glob("*/*/*.txt"))


def test_layout_headers_and_images(dataset):
    root, summary = dataset
    assert sorted(p.name for p in root.iterdir()) == ["annotations", "cropped_aligned", "faces", "latents", "synth_info.json"]
    assert summary.videos == ["synth001", "synth002", "synth003", "synth004_left", "synth004_right"]
    assert sorted(p.name for p in (root / "cropped_aligned").iterdir()) == summary.videos
    files = _annotation_files(root)
    assert {p.parent.parent.name for p in files} == {spec.challenge_dir for spec in TASKS.values()}
    assert {p.parent.name for p in files} == set(SPLITS.values())
    info = json.loads((root / "synth_info.json").read_text())
    lengths = {v["name"]: v["frames"] for v in info["videos"]}
    for path in files:
        task = next(t for t, spec in TASKS.items() if spec.challenge_dir == path.parent.parent.name)
        data = path.read_bytes()
        assert data.startswith(HEADERS[task]), path
        lines = data.decode().splitlines()
        assert len(lines) == lengths[path.stem] + 1
        assert all(LINE_FORMAT[task].match(line) for line in lines[1:]), path
    frames = sorted((root / "cropped_aligned" / "synth001").iterdir())
    assert frames[0].name == "00001.jpg" or "00001.jpg" not in {f.name for f in frames}
    assert all(re.fullmatch(r"\d{5}\.jpg", f.name) for f in frames)
    assert max(int(f.stem) for f in frames) <= lengths["synth001"]
    with Image.open(frames[0]) as img:
        assert (img.format, img.size, img.mode) == ("JPEG", (112, 112), "RGB")
    faces = sorted((root / "faces").iterdir())
    assert len(faces) == 300 and faces[0].name == "00001.jpg" and faces[-1].name == "00300.jpg"
    with Image.open(faces[0]) as img:
        assert (img.format, img.size) == ("JPEG", (112, 112))


def test_readers_return_the_latent_labels(dataset):
    """The ordinary Aff-Wild2 reader gives back exactly the labels derived from the stored latents."""
    root, summary = dataset
    index = FrameIndex(root)
    seen = {task: 0 for task in TASKS}
    for task in TASKS:
        for split in SPLITS:
            videos = load_annotations(root / "annotations", task, split)
            assert [v.video for v in videos] == summary.tasks[task][split]
            for labels in videos:
                with np.load(root / "latents" / f"{labels.video}.npz") as data:
                    latent, present = data["latent"], data["present"]
                va, expr, au = labels_from_latents(latent)
                want = {"va": va, "expr": expr[:, None], "au": au}[task]
                got = labels.labels[labels.valid]
                np.testing.assert_allclose(got, want[labels.valid], atol=5e-4)
                assert (labels.labels[~labels.valid] == TASKS[task].invalid).all()
                np.testing.assert_array_equal(index.available(labels.video, labels.n_frames), present)
                seen[task] += int((~labels.valid).sum())
    assert seen == summary.invalid_rows
    assert all(count > 0 for count in seen.values())


def test_written_labels_are_smooth_in_time(dataset):
    root, _ = dataset
    for split in SPLITS:
        for labels in load_annotations(root / "annotations", "va", split):
            va = labels.labels[labels.valid]
            for i in range(2):
                assert np.corrcoef(va[1:, i], va[:-1, i])[0, 1] > 0.9, (labels.video, i)
        for labels in load_annotations(root / "annotations", "expr", split):
            expr = labels.labels[labels.valid, 0]
            assert (expr[1:] != expr[:-1]).mean() < 0.15, labels.video  # classes last many frames


def test_missing_frames_have_annotation_lines(dataset):
    root, summary = dataset
    assert summary.missing_frames > 0
    index = FrameIndex(root)
    missing_total = 0
    for path in (root / "annotations" / TASKS["va"].challenge_dir).glob("*/*.txt"):
        labels = read_annotation_file(path, "va")
        available = index.available(labels.video, labels.n_frames)
        missing_total += int((~available).sum())
        for k in np.flatnonzero(~available):
            assert not index.frame_path(labels.video, k).exists()
    info = json.loads((root / "synth_info.json").read_text())
    by_name = {v["name"]: v for v in info["videos"]}
    assert missing_total == sum(by_name[v]["missing_frames"] for v in summary.tasks["va"]["train"] + summary.tasks["va"]["val"])


def test_left_right_pair(dataset):
    root, summary = dataset
    left, right = root / "latents" / "synth004_left.npz", root / "latents" / "synth004_right.npz"
    with np.load(left) as a, np.load(right) as b:
        assert a["latent"].shape == b["latent"].shape
        assert np.abs(a["latent"] - b["latent"]).mean() > 0.05
        both = int(np.flatnonzero(a["present"] & b["present"])[0])
    assert "synth004_left" in summary.splits["train"] and "synth004_right" in summary.splits["train"]
    img_left = np.asarray(Image.open(root / "cropped_aligned" / "synth004_left" / f"{both + 1:05d}.jpg"))
    img_right = np.asarray(Image.open(root / "cropped_aligned" / "synth004_right" / f"{both + 1:05d}.jpg"))
    assert np.abs(img_left.astype(int) - img_right).mean() > 10


@pytest.mark.parametrize("videos", [3, 4, 8, 10, 12])
def test_plan_gives_every_task_two_train_and_one_val_video(videos):
    for seed in range(4):
        plan = plan_videos(videos, 400, seed)
        assert len(plan) == videos
        assert [p.name for p in plan][-2:] == [f"synth{videos - 1:03d}_left", f"synth{videos - 1:03d}_right"]
        for task in TASKS:
            assert sum(task in p.tasks and p.split == "train" for p in plan) >= 2
            assert sum(task in p.tasks and p.split == "val" for p in plan) >= 1
        assert all(300 <= p.n_frames <= 500 for p in plan)
    dropped = sum(len(p.tasks) < 3 for seed in range(4) for p in plan_videos(10, 400, seed))
    assert dropped > 0  # not every video carries every task, as in real Aff-Wild2


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate_affwild2(tmp_path / "a", videos=3, frames=30, seed=11, faces=2)
    b = generate_affwild2(tmp_path / "b", videos=3, frames=30, seed=11, faces=2)
    c = generate_affwild2(tmp_path / "c", videos=3, frames=30, seed=12, faces=2)
    files_a = [p.relative_to(tmp_path / "a") for p in _annotation_files(tmp_path / "a")]
    assert files_a == [p.relative_to(tmp_path / "b") for p in _annotation_files(tmp_path / "b")]
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    frame = next((tmp_path / "a" / "cropped_aligned" / "synth001").iterdir()).name
    assert (tmp_path / "a" / "cropped_aligned" / "synth001" / frame).read_bytes() == (
        tmp_path / "b" / "cropped_aligned" / "synth001" / frame
    ).read_bytes()
    assert a.frames == b.frames
    va = TASKS["va"].challenge_dir
    texts_c = {p.name: p.read_text() for p in (tmp_path / "c" / "annotations" / va).glob("*/*.txt")}
    texts_a = {p.name: p.read_text() for p in (tmp_path / "a" / "annotations" / va).glob("*/*.txt")}
    assert texts_a != texts_c and c.seed == 12


def test_output_folder_is_protected(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(AffectMAEError, match="is not empty and holds no synth_info.json"):
        generate_affwild2(tmp_path, videos=1, frames=5, faces=0, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(AffectMAEError, match="need videos >= 1"):
        generate_affwild2(tmp_path / "x", videos=0)


def test_trajectories_are_smooth_and_classes_balanced():
    rng = np.random.default_rng(0)
    counts = np.zeros(len(EXPRESSIONS))
    lag1 = []
    for _ in range(30):
        traj = sample_trajectory(400, rng)
        va, expr, au = labels_from_latents(traj.latent)
        counts += np.bincount(expr, minlength=len(EXPRESSIONS))
        lag1 += [np.corrcoef(va[1:, i], va[:-1, i])[0, 1] for i in range(2)]
        assert np.abs(np.diff(au, axis=0)).mean() < 0.05  # AU labels change rarely from frame to frame
        assert traj.observed.shape == traj.latent.shape == (400, len(LATENT_NAMES))
    assert min(lag1) > 0.9
    share = counts / counts.sum()
    assert share.min() > 0.05 and share.max() < 0.25, share.round(3)


def test_expression_rules():
    expected = ["Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other"]
    assert [EXPRESSIONS[i] for i in expression_from_latent(PROTOTYPES)] == expected
    _, _, au = labels_from_latents(PROTOTYPES[4:5])  # happiness: AU6, AU12, AU25 active
    assert au[0].tolist() == [0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0]


def test_render_draws_each_latent_in_its_region():
    rng = np.random.default_rng(0)
    base = PROTOTYPES[0].copy()
    plain = render_face(base, rng, 112, noise=0).astype(int)
    assert plain.shape == (112, 112, 3)
    brows = base.copy()
    brows[2 + 0] = brows[2 + 1] = 1.0  # AU1 + AU2
    smile = base.copy()
    smile[2 + 6] = 1.0  # AU12
    diff_brows = np.abs(render_face(brows, rng, 112, noise=0).astype(int) - plain).sum(axis=2)
    diff_smile = np.abs(render_face(smile, rng, 112, noise=0).astype(int) - plain).sum(axis=2)
    assert diff_brows[30:50].sum() > 20 * diff_brows[70:].sum()  # brows move, the mouth does not
    assert diff_smile[72:92].sum() > 20 * diff_smile[:55].sum()  # the mouth moves, the brows do not
    with pytest.raises(ValueError, match=r"params must have shape \(14,\)"):
        render_face(np.zeros(3), rng)


def test_expression_is_learnable_from_pixels(dataset):
    """A linear classifier on 16x16 grey pixels of faces/ (300 people) predicts EXPR on video frames of
    other people far above the best constant prediction."""
    from sklearn.linear_model import RidgeClassifier

    root, _ = dataset

    def pixels(path):
        img = Image.open(path).convert("L").resize((16, 16), Image.BILINEAR)
        return np.asarray(img, dtype=np.float32).ravel() / 255.0

    with np.load(root / "latents" / "faces.npz") as data:
        train_x = np.stack([pixels(root / "faces" / f) for f in data["files"]])
        train_y = labels_from_latents(data["latent"])[1]
    index = FrameIndex(root)
    test_x, test_y = [], []
    for split in SPLITS:
        for labels in load_annotations(root / "annotations", "expr", split):
            for k in np.flatnonzero(index.available(labels.video, labels.n_frames) & labels.valid)[::2]:
                test_x.append(pixels(index.frame_path(labels.video, k)))
                test_y.append(int(labels.labels[k, 0]))
    mean, std = train_x.mean(0), train_x.std()
    model = RidgeClassifier(alpha=1.0).fit((train_x - mean) / std, train_y)
    score = expr_metrics(model.predict((np.stack(test_x) - mean) / std), np.array(test_y))["score"]
    constant = max(expr_metrics(np.full(len(test_y), c), np.array(test_y))["score"] for c in range(8))
    assert score > 0.3 and score > 3 * constant, (score, constant)


def test_oracle_ceiling(dataset):
    root, _ = dataset
    scores = oracle_scores(root, "train")
    for task in TASKS:  # the latent oracle reproduces the labels (a class absent from the split scores 0 F1)
        true = np.concatenate([v.labels for v in load_annotations(root / "annotations", task, "train")])
        valid = true[:, 0] != TASKS[task].invalid
        assert scores["latent"][task] == round(evaluate(task, true[valid], true[valid])["score"], 4)
    assert scores["latent"]["va"] == 1.0
    for task in TASKS:
        assert 0.5 < scores["frame"][task] < 1.0
        assert scores["temporal"][task] > scores["frame"][task]
    with np.load(root / "latents" / "synth001.npz") as data:
        latents = {k: data[k] for k in data.files}
    frame = oracle_predictions(latents, "frame")
    hidden = ~latents["present"]
    np.testing.assert_allclose(frame[hidden], np.broadcast_to(frame[hidden][0], frame[hidden].shape))


def test_cli_synth_end_to_end(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["synth", str(out), "--videos", "3", "--frames", "40", "--faces", "4", "--seed", "5"]) == 0
    stdout = capsys.readouterr().out
    assert "wrote 3 videos" in stdout and "4 face images" in stdout
    info = json.loads((out / "synth_info.json").read_text())
    assert info["parameters"] == {"videos": 3, "frames": 40, "seed": 5, "faces": 4, "size": 112, "source": "cartoon",
                                  "photos": [], "train_people": 0, "exclude_people": []}
    assert info["people"] == {"source": "cartoon"}
    assert info["complete"] is True
    assert [v["name"] for v in info["videos"]] == ["synth001", "synth002_left", "synth002_right"]
    assert info["splits"] == {"train": ["synth002_left", "synth002_right"], "val": ["synth001"]}
    assert main(["synth", str(out), "--videos", "3", "--frames", "40"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["synth", str(out), "--videos", "3", "--frames", "20", "--faces", "1", "--overwrite"]) == 0
    assert len(list((out / "faces").iterdir())) == 1


def test_cli_synth_config_file_and_overrides(tmp_path, capsys):
    config = tmp_path / "synth.yaml"
    config.write_text(f"out: {tmp_path / 'from_config'}\nvideos: 3\nframes: 40\nfaces: 2\nseed: 9\n")
    assert main(["synth", "--config", str(config), "frames=30", "seed=4"]) == 0
    assert "wrote 3 videos" in capsys.readouterr().out
    info = json.loads((tmp_path / "from_config" / "synth_info.json").read_text())
    assert info["parameters"] == {"videos": 3, "frames": 30, "seed": 4, "faces": 2, "size": 112, "source": "cartoon",
                                  "photos": [], "train_people": 0, "exclude_people": []}
    # OUT and a flag beat the config file; the dataset equals the one generate_affwild2 writes with those settings
    assert main(["synth", "--config", str(config), "--seed", "6", str(tmp_path / "flags"), "faces=1"]) == 0
    generate_affwild2(tmp_path / "direct", videos=3, frames=40, seed=6, faces=1)
    for rel in [p.relative_to(tmp_path / "direct") for p in _annotation_files(tmp_path / "direct")]:
        assert (tmp_path / "flags" / rel).read_bytes() == (tmp_path / "direct" / rel).read_bytes()
    capsys.readouterr()
    assert main(["synth", str(tmp_path / "bad"), "vidoes=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("affectmae synth: error: command line: unknown setting 'vidoes' for SynthConfig; known: ")
    assert not (tmp_path / "bad").exists()
    assert main(["synth", str(tmp_path / "one"), str(tmp_path / "two")]) == 2
    assert "synth writes one dataset, got 2 output folders" in capsys.readouterr().err
    with pytest.raises(AffectMAEError, match="synth needs an output folder"):
        run_synth(overrides=["videos=2"])
    summary = run_synth(None, {"videos": "1", "frames": "8"}, out=str(tmp_path / "api"), faces=0)
    assert (summary.videos, summary.frames, summary.faces) == (["synth001"], plan_videos(1, 8, 0)[0].n_frames, 0)


def test_cli_train_people_uses_n_training_people_and_keeps_the_validation_people(tmp_path, capsys, monkeypatch):
    """--train-people on photo people (flat canvases, so no detector runs): recorded, and refused when too large."""
    from affectmae.synth import photos as photo_faces
    from affectmae.synth.photos import CANVAS, PhotoPerson

    rng = np.random.default_rng(0)
    people = [PhotoPerson(f"p{k}.jpg#0", "x", np.full((CANVAS, CANVAS, 3), rng.uniform(60, 200), np.float32), 0.9,
                          100.0, f"id{k}") for k in range(10)]
    monkeypatch.setattr(photo_faces, "find_face_photos", lambda extra: [])
    monkeypatch.setattr(photo_faces, "load_photo_people", lambda paths: people)
    infos = {}
    for n in (0, 3):
        out = tmp_path / f"n{n}"
        assert main(["synth", str(out), "--source", "photos", "--videos", "4", "--frames", "12", "--faces", "6",
                     "--train-people", str(n)]) == 0
        infos[n] = json.loads((out / "synth_info.json").read_text())
        assert infos[n]["parameters"]["train_people"] == infos[n]["people"]["train_people"] == n
    assert "3 training and 2 validation people from face photographs" in capsys.readouterr().out
    full, three = (infos[n]["people"]["identity_split"] for n in (0, 3))
    assert three["val"] == full["val"] and len(full["train"]) == 8 and set(three["train"]) < set(full["train"])
    used = {v["identity"] for v in infos[3]["videos"] if v["split"] == "train"}
    assert used <= set(three["train"])
    assert main(["synth", str(tmp_path / "big"), "--source", "photos", "--train-people", "9"]) == 2
    assert "train_people=9 but seed 0 leaves only 8 training people (10 people, 2 kept for validation)" in \
        capsys.readouterr().err
    assert main(["synth", str(tmp_path / "c"), "--train-people", "2"]) == 2
    assert "train_people applies to --source photos" in capsys.readouterr().err
    assert not (tmp_path / "big").exists() and not (tmp_path / "c").exists()


def test_yuface_finds_rendered_faces_in_a_scene():
    """Faces rendered at 160-200 px and pasted into 640x360 scenes are found by yuface (the default face detector)."""
    pytest.importorskip("yuface")
    script = textwrap.dedent(
        """
        import numpy as np, yuface
        from affectmae.synth.latents import sample_trajectory
        from affectmae.synth.cartoon import render_face, sample_identity
        rng = np.random.default_rng(123)
        found = 0
        for i in range(12):
            traj = sample_trajectory(40, rng, occlusion_rate=0.0)
            size, t = int(rng.integers(160, 201)), int(rng.integers(40))
            face = render_face(traj.observed[t], rng, size, identity=sample_identity(rng), pose=traj.pose[t], light=traj.light[t])
            scene = np.clip(rng.uniform(40, 200, 3) + rng.normal(0, 8, (360, 640, 3)), 0, 255).astype(np.uint8)
            x, y = int(rng.integers(0, 640 - size)), int(rng.integers(0, 360 - size))
            scene[y:y + size, x:x + size] = face
            confs, boxes, _ = yuface.detect(np.ascontiguousarray(scene[..., ::-1]), conf=0.5)
            found += any(x <= bx + bw / 2 <= x + size and y <= by + bh / 2 <= y + size for bx, by, bw, bh in boxes.astype(int))
        print(found)
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) >= 11
