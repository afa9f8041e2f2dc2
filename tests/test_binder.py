"""The Binder files: they install the project as repo2docker runs them, and the demos run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

# Installs the project into a fresh environment and runs the demo notebooks.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"
DEMOS = sorted(BINDER.glob("*.ipynb"))


def test_there_are_two_demo_notebooks() -> None:
    assert [p.name for p in DEMOS] == ["sales-analysis.ipynb", "teaching-exercises.ipynb"]


@pytest.mark.parametrize("path", DEMOS, ids=lambda p: p.name)
def test_the_demo_notebook_is_valid_and_runs_top_to_bottom(path: Path, tmp_path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == []
    if path.name == "teaching-exercises.ipynb":
        assert "all good" in "".join(o.get("text", "") for o in nb.cells[-1].outputs)


def built_llama_wheels(target: Path) -> str | None:
    """llama-cpp-python wheels this machine already built (pip's cache), so the Binder
    install does not compile llama.cpp a second time; the commands are unchanged."""
    cache = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True).stdout.strip()
    wheels = list(Path(cache).glob("wheels/**/llama_cpp_python-*.whl")) if cache else []
    for wheel in wheels:
        shutil.copy(wheel, target)
    return str(target) if wheels else None


def test_the_binder_files_install_the_project_as_repo2docker_would(tmp_path: Path) -> None:
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / "bin"
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV" and not k.startswith("JUPYTER")}
    env |= {"PATH": f"{bin_dir}:{env['PATH']}", "VIRTUAL_ENV": str(env_dir), "HOME": str(home)}
    links = built_llama_wheels(tmp_path)
    if links:
        env["PIP_FIND_LINKS"] = links
    # repo2docker: install binder/requirements.txt, then run binder/postBuild from the repository root.
    for command in (["pip", "install", "-r", "binder/requirements.txt"], ["bash", "binder/postBuild"]):
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    model = home / ".cache" / "jupyter-codestral" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    assert model.stat().st_size == 491_400_064
    assert (home / "sales-analysis.ipynb").exists()
    labext = subprocess.run([str(bin_dir / "jupyter"), "labextension", "list"], env=env, capture_output=True, text=True)
    assert "jupyter-codestral" in labext.stdout + labext.stderr and "enabled" in labext.stdout + labext.stderr
    server = subprocess.run([str(bin_dir / "jupyter"), "server", "extension", "list"], env=env, capture_output=True, text=True)
    assert "jupyter_codestral" in server.stdout + server.stderr and "enabled" in server.stdout + server.stderr
    lean = subprocess.run([str(bin_dir / "pip"), "list", "--format=freeze"], env=env, capture_output=True, text=True).stdout
    assert "torch" not in lean and "tensorflow" not in lean
