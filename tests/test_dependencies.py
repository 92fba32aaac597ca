"""The dependency set of pyproject.toml resolves to binary wheels on every Python the project claims (3.10-3.13),
checked with pip's resolver (`pip install --dry-run --python-version 3.X --only-binary=:all:`) against the
package index, since only one Python runs on the CI machine. Markers (`; python_version < '3.12'`) are
evaluated for the target Python here, because pip evaluates them for the running one.

pip reads each candidate's metadata with HTTP range requests (`--use-feature=fast-deps`) instead of downloading
the wheel: without them the check fetched torch (555 MB), triton (248 MB) and the CUDA wheels once per Python,
which a CI machine's disk and connection did not always survive. A run that fails for the machine's reasons
(connection, full disk) is retried once and then skipped, naming pip's message; a dependency set that does not
resolve fails."""

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


# pip's messages when the machine, not the dependency set, is at fault
ENVIRONMENT_FAULTS = ("network connectivity", "No space left on device", "Could not fetch URL", "ConnectionError",
                      "Read timed out", "Connection reset", "Temporary failure in name resolution")


def environment_fault(stderr: str) -> str | None:
    return next((fault for fault in ENVIRONMENT_FAULTS if fault in stderr), None)


def test_environment_faults_are_told_from_resolution_failures():
    assert environment_fault("ERROR: Could not install packages due to an OSError: [Errno 28] No space left on "
                             "device") == "No space left on device"
    assert environment_fault("note: This is an issue with network connectivity, not pip.") == "network connectivity"
    assert environment_fault("ERROR: Could not find a version that satisfies the requirement yuface>=0.1 (from "
                             "versions: none)\nERROR: No matching distribution found for yuface>=0.1") is None
    assert environment_fault("ERROR: ResolutionImpossible: for help visit https://pip.pypa.io") is None


def resolve(python: str, report: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--no-cache-dir",
           "--use-feature=fast-deps", "--only-binary=:all:", "--python-version", python, "--report", str(report),
           *requirements_for(python)]
    for _attempt in range(2):
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if run.returncode == 0 or environment_fault(run.stderr) is None:
            break
    return run


@pytest.mark.parametrize("python", ["3.10", "3.11", "3.12", "3.13"])
def test_dependencies_resolve_for(python, tmp_path):
    report = tmp_path / "report.json"
    run = resolve(python, report)
    if run.returncode != 0 and environment_fault(run.stderr):
        pytest.skip(f"pip could not reach the index or write its files twice ({environment_fault(run.stderr)}): "
                    f"{run.stderr.strip().splitlines()[-1]}")
    assert run.returncode == 0, f"dependencies do not resolve for Python {python}:\n{run.stderr[-3000:]}"
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"torch", "av", "mtcnn", "lz4", "joblib"} <= names  # a detector with 5 landmarks on every Python
    assert ("yuface" in names) == (python in ("3.10", "3.11"))
