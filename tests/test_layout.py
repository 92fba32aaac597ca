"""The package layout rules of docs/architecture.md, checked on the source itself.

- no function or method longer than 80 lines, no module longer than 400 lines;
- the inference side (``inference``, ``face``, ``media``, ``models``, ``features.store``) never imports
  ``affectmae.training``;
- no internal notes or per-machine timings in docstrings;
- no work-history notes (tracker issue numbers, work sessions) in the docs, the code, the tests or the
  benchmarks: readers cannot look them up.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "affectmae"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 400


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


def test_the_package_has_the_documented_folders():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == {"cli", "datasets", "evaluation", "face", "features", "inference", "media", "models",
                       "synth", "training"}


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_module_and_function_length(path: Path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{_rel(path)} has {len(text.splitlines())} lines"
    long = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            length = node.end_lineno - start + 1
            if length > MAX_FUNCTION_LINES:
                long.append(f"{node.name} ({length} lines)")
    assert not long, f"{_rel(path)}: " + ", ".join(long)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


INFERENCE_SIDE = [p for p in MODULES if p.relative_to(PACKAGE).parts[0] in {"inference", "face", "media", "models"}]


@pytest.mark.parametrize("path", INFERENCE_SIDE, ids=_rel)
def test_inference_side_never_imports_training(path: Path):
    assert not [m for m in _imports(path) if m.startswith("affectmae.training")], _rel(path)


def test_no_relative_imports_and_no_internal_notes():
    for path in MODULES:
        tree = ast.parse(path.read_text())
        rel = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
        assert not rel, f"{_rel(path)}:{rel[0]}: relative import"
        hits = [i + 1 for i, line in enumerate(path.read_text().splitlines())
                if re.search(r"\bengineer [A-Z]\b|\bTODO\b|\bXXX\b", line)]
        assert not hits, f"{_rel(path)}:{hits[0]}: internal note"


REPO = PACKAGE.parents[1]
HISTORY_NOTE = re.compile(r"\bissues? #?\d+|\b(this|second|third) session\b", re.IGNORECASE)
TEXT_SUFFIXES = {".md", ".py", ".yaml", ".yml", ".toml", ".txt", ".cfg"}


def _text_files() -> list[Path]:
    files = [REPO / "README.md"]
    for folder in ("docs", "src", "tests", "benchmarks"):
        files += [p for p in sorted((REPO / folder).rglob("*"))
                  if p.suffix in TEXT_SUFFIXES and p.is_file() and "__pycache__" not in p.parts]
    return files


def test_no_work_history_notes():
    hits = []
    for path in _text_files():
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            match = HISTORY_NOTE.search(line)
            if match:
                hits.append(f"{path.relative_to(REPO).as_posix()}:{i}: {match.group(0)!r}")
    assert not hits, "work-history notes a reader cannot look up:\n" + "\n".join(hits)
