"""The dependency set of pyproject.toml resolves to binary wheels on every Python the project claims (3.10-3.13),
checked with pip's resolver (`pip install --dry-run --python-version 3.X --only-binary=:all:`) against the
package index, since only one Python runs on the CI machine. Markers (`; python_version < '3.12'`) are
evaluated for the target Python here, because pip evaluates them for the running one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parents[1]


def requirements_for(python: str) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = {**default_environment(), "python_version": python, "python_full_version": f"{python}.0"}
    out = []
    for line in project["dependencies"] + project["optional-dependencies"]["test"]:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            req.marker = None
            out.append(str(req))
    return out


def test_markers_are_evaluated_for_the_target_python():
    assert any(r.startswith("yuface") for r in requirements_for("3.11"))
    assert not any(r.startswith("yuface") for r in requirements_for("3.12"))
    assert any(r.startswith("mtcnn") for r in requirements_for("3.13"))


@pytest.mark.parametrize("python", ["3.10", "3.11", "3.12", "3.13"])
def test_dependencies_resolve_for(python, tmp_path):
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--only-binary=:all:", "--python-version", python, "--report", str(report), *requirements_for(python)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"dependencies do not resolve for Python {python}:\n{run.stderr[-3000:]}"
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"torch", "av", "mtcnn", "lz4", "joblib"} <= names  # a detector with 5 landmarks on every Python
    assert ("yuface" in names) == (python in ("3.10", "3.11"))
