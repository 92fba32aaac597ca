"""The ``affectmae`` command line. It only wires: every subcommand parses arguments and calls one
library function.

Subcommands live in ``affectmae/cli/cmd_<name>.py``; each module defines ``register(subparsers)`` which
adds its parser and sets ``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an
exit code or None). Modules are discovered automatically, so adding a stage never edits this file.
A stage's subcommand takes ``--config FILE`` and ``key=value`` settings (:func:`add_config_arguments`) and
calls the stage's ``run_<stage>(config, overrides, **flags)`` once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import re
import sys

from affectmae import __version__
from affectmae.errors import AffectMAEError
from affectmae.io import OutputWriteError, is_write_error

log = logging.getLogger("affectmae")

_SETTING = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def add_config_arguments(parser: argparse.ArgumentParser, config_class: str, overrides: bool = True) -> None:
    """``--config FILE`` and, with ``overrides``, trailing ``key=value`` settings of ``config_class``."""
    parser.add_argument("--config", metavar="FILE", default=None,
                        help=f"YAML file (or packaged config name) of {config_class} settings; flags and key=value "
                             "settings override it")
    if overrides:
        parser.add_argument("overrides", nargs="*", metavar="key=value", help=f"any {config_class} setting")


def split_settings(tokens: list[str]) -> tuple[list[str], list[str]]:
    """Positional ``tokens`` -> (plain arguments, ``key=value`` settings); a token naming an existing path is
    always a plain argument, so a file called ``a=b.mp4`` is still an input."""
    settings = [t for t in tokens if _SETTING.match(t) and not os.path.exists(t)]
    return [t for t in tokens if t not in settings], settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="affectmae",
        description="Valence/arousal, expression and action units per video frame (MAE ViT + TCN/Transformer).",
    )
    parser.add_argument("--version", action="version", version=f"affectmae {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"{__name__}.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "omp_passive", False):
        # Before the subcommand loads PyTorch: its idle OpenMP workers busy-wait and slow the face detector
        # badly on small machines. Only commands that run the detector ask for this (set_defaults), since it
        # slows pure PyTorch work (training, extract); measurements in docs/analyze.md. A user's own setting wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        code = args.func(args)
    except AffectMAEError as err:
        print(f"affectmae {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a write failure no stage caught (disk full, read-only): still one line
        if not is_write_error(err):
            raise
        print(f"affectmae {args.command}: error: {OutputWriteError(err.filename or 'a file', err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"affectmae {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
