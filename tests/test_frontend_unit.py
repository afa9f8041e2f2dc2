"""The frontend's unit tests (TypeScript, Node's test runner), run as part of the suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Compiles the frontend and runs Node.
pytestmark = pytest.mark.slow

LABEXTENSION = Path(__file__).resolve().parent.parent / "labextension"


def jlpm() -> list[str]:
    # jlpm comes with jupyterlab (a dependency), beside this Python.
    beside = Path(sys.executable).parent / "jlpm"
    found = str(beside) if beside.exists() else shutil.which("jlpm")
    assert found, "jlpm was not found; it comes with jupyterlab"
    return [found]


def test_frontend_unit_tests_pass() -> None:
    if not (LABEXTENSION / "node_modules").exists():
        subprocess.run([*jlpm(), "install"], cwd=LABEXTENSION, check=True, capture_output=True, timeout=600)
    result = subprocess.run([*jlpm(), "test"], cwd=LABEXTENSION, capture_output=True, text=True, timeout=600)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert "# fail 0" in report and "# pass 0" not in report, report
