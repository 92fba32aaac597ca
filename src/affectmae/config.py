"""Three-layer configuration: dataclass defaults, then a YAML file, then ``key=value`` overrides.

Every stage has its own dataclass (defined next to the stage). ``load_config`` merges the layers and
checks every key and type, so a typo in a YAML file or an override fails with the file and key named.
The merged config is written into each run folder with ``save_config``. A dataclass may map old setting
names to new ones in a ``RENAMED`` class attribute (``{"out_dir": "out"}``): an old name still works,
with a warning, so YAML files and run folders written before a rename keep loading.

Allowed values are declared on the fields, as ``field(default=32, metadata={"min": 1})``, and checked here
for every value that a file or an override sets, so a bad number fails before any work with the allowed
range in the message (``command line: batch_size must be >= 1, got 0``). Metadata keys: ``min`` / ``max``
(inclusive), ``gt`` / ``lt`` (exclusive), ``choices``, and ``path``: ``"dir"`` (an input folder),
``"file"`` (an input file), ``"out_dir"`` (an output folder); a path setting naming something of the
other kind is refused. Settings that depend on each other are checked by the dataclass's own
``check(prefix)`` method, called on the merged config (and on every nested config).
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from affectmae.errors import AffectMAEError, InputFormatError

C = TypeVar("C")
log = logging.getLogger(__name__)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a ``key=value`` string) to the field's annotated type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except AffectMAEError as err:
                errors.append(str(err))
        raise AffectMAEError(errors[0] if errors else f"{where}: cannot use {value!r}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        items = [_coerce(v, inner, where) for v in value] if inner is not Any and inner is not Ellipsis else list(value)
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise AffectMAEError(f"{where}: expected true/false, got {value!r}")
    if annotation in (int, float, str):
        if annotation is int and isinstance(value, float) and not value.is_integer():
            raise AffectMAEError(f"{where}: expected an integer, got {value!r}")
        try:
            return annotation(value) if annotation is not int else int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        except (TypeError, ValueError):
            raise AffectMAEError(f"{where}: expected {annotation.__name__}, got {value!r}") from None
    return value


def _describe(meta: typing.Mapping[str, Any]) -> str | None:
    """The allowed values a field's metadata declares, in words: ``>= 1``, ``in [0, 1)``, ``one of a, b``."""
    if "choices" in meta:
        return "one of " + ", ".join(map(str, meta["choices"]))
    low = ("[", meta["min"]) if "min" in meta else ("(", meta["gt"]) if "gt" in meta else None
    high = (meta["max"], "]") if "max" in meta else (meta["lt"], ")") if "lt" in meta else None
    if low and high:
        return f"in {low[0]}{low[1]}, {high[0]}{high[1]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {low[1]}"
    if high:
        return f"{'<=' if high[1] == ']' else '<'} {high[0]}"
    return None


def _allowed(value: Any, meta: typing.Mapping[str, Any]) -> bool:
    if "choices" in meta:
        return value in meta["choices"]
    return not (("min" in meta and value < meta["min"]) or ("gt" in meta and value <= meta["gt"])
                or ("max" in meta and value > meta["max"]) or ("lt" in meta and value >= meta["lt"]))


_PATH_KINDS = {"dir": ("a folder", Path.is_file, "file"), "out_dir": ("a folder", Path.is_file, "file"),
               "file": ("a file", Path.is_dir, "folder")}


def check_value(name: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    """Raise AffectMAEError ``"<name> must be <allowed>, got <value>"`` when ``value`` breaks ``meta``
    (a field's metadata). None (an unset optional setting) and "" (an unset path) always pass; a list is
    checked item by item."""
    if value is None or value == "":
        return
    if isinstance(value, (list, tuple)) and "path" not in meta:
        for item in value:
            check_value(name, item, meta)
        return
    kind = meta.get("path")
    if kind is not None:
        for item in value if isinstance(value, (list, tuple)) else [value]:
            want, wrong, noun = _PATH_KINDS[kind]
            if wrong(Path(item)):
                raise AffectMAEError(f"{name} must be {want}, got the {noun} {item}")
        return
    allowed = _describe(meta)
    if allowed is not None and not _allowed(value, meta):
        raise AffectMAEError(f"{name} must be {allowed}, got {value!r}")


def check_config(cfg: Any, prefix: str = "") -> None:
    """Every field of ``cfg`` (and of its nested configs) against its metadata, then the dataclass's own
    ``check(prefix)`` for settings that depend on each other. Stages built without :func:`load_config`
    (a dataclass made in code) call this before they start."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_config(value, f"{prefix}{f.name}.")
        else:
            check_value(f"{prefix}{f.name}", value, f.metadata)
    check = getattr(cfg, "check", None)
    if callable(check):
        check(prefix)


def _apply(cfg: Any, updates: dict[str, Any], source: str, prefix: str = "") -> Any:
    hints = typing.get_type_hints(type(cfg))
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    names = set(fields)
    renamed = getattr(type(cfg), "RENAMED", {})
    changes = {}
    for key, value in updates.items():
        head, _, rest = key.partition(".")
        if head in renamed and head not in names:
            log.warning("%s: setting %r is now called %r", source, head, renamed[head])
            head = renamed[head]
        if head not in names:
            raise AffectMAEError(
                f"{source}: unknown setting {key!r} for {type(cfg).__name__}; known: {', '.join(sorted(names))}"
            )
        current = getattr(cfg, head)
        if dataclasses.is_dataclass(current):
            nested = {rest: value} if rest else dict(value or {})
            changes[head] = _apply(current, nested, source, f"{prefix}{head}.")
        else:
            changes[head] = _coerce(value, hints[head], f"{source}: {key}")
            try:
                check_value(f"{prefix}{head}", changes[head], fields[head].metadata)
            except AffectMAEError as err:
                raise AffectMAEError(f"{source}: {err}") from None
    return dataclasses.replace(cfg, **changes)


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    """``["lr=1e-4", "model.depth=2"]`` -> ``{"lr": "1e-4", "model.depth": "2"}``."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise AffectMAEError(f"override {pair!r} is not of the form key=value")
        out[key.strip()] = value.strip()
    return out


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | dict | None = None) -> C:
    """Defaults of ``cls``, updated by the YAML file at ``path``, then by ``overrides``."""
    cfg = cls()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise AffectMAEError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            raise InputFormatError(path, f"invalid YAML: {err}", line=mark.line + 1 if mark else None) from None
        if not isinstance(data, dict):
            raise InputFormatError(path, "a config file must be a mapping of setting: value")
        cfg = _apply(cfg, data, str(path))
    if overrides:
        if not isinstance(overrides, dict):
            overrides = parse_overrides(overrides)
        cfg = _apply(cfg, overrides, "command line")
    check_config(cfg)
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    return {k: plain(v) if not isinstance(v, dict) else v for k, v in dataclasses.asdict(cfg).items()}


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the merged config as YAML (atomically), so every run folder records how it was made."""
    from affectmae.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def resolve_config(path_or_name: str | Path | None) -> Path | None:
    """A config file path, or the name of a packaged config (``pretrain_tiny`` / ``pretrain_tiny.yaml``)."""
    if path_or_name is None:
        return None
    path = Path(path_or_name)
    if path.is_file():
        return path
    packaged = Path(__file__).resolve().parent / "configs"
    for candidate in (packaged / path.name, packaged / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in packaged.glob("*.yaml")))
    raise AffectMAEError(f"config file not found: {path_or_name} (packaged configs: {known})")


def build_config(cls: type[C], config: str | Path | None = None, overrides: list[str] | dict | None = None,
                 **explicit: Any) -> C:
    """The one entry-point rule of every stage: defaults, then the config file (a path or a packaged name), then
    ``key=value`` overrides, then the named arguments that are not None (the CLI's own flags)."""
    updates = dict(overrides) if isinstance(overrides, dict) else parse_overrides(overrides)
    updates.update({k: v for k, v in explicit.items() if v is not None})
    return load_config(cls, resolve_config(config), updates)

