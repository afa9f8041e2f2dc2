"""``jupyter codestral`` verbs, run as a user runs them, against loopback backends and the embedded model."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import MODEL_CACHE, NOTEBOOK, notebook_request, write_notebook
from fake_backends import FAKE_KEY, FakeFimServer

from jupyter_codestral.embedded.model_files import BUNDLED, ensure_model

# Each test runs `jupyter codestral` as a process.
pytestmark = pytest.mark.slow

JUPYTER = str(Path(sys.executable).parent / "jupyter")


async def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> tuple[int, str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("JUPYTER_CODESTRAL")}
    proc = await asyncio.create_subprocess_exec(
        JUPYTER, "codestral", *args, env={**clean, "JUPYTER_CODESTRAL_CACHE_DIR": MODEL_CACHE, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


def mistral_env(fake: FakeFimServer) -> dict[str, str]:
    return {"CODESTRAL_API_KEY": FAKE_KEY, "JUPYTER_CODESTRAL_URL": fake.url}


@pytest.mark.parametrize("verb", [[], ["complete"], ["doctor"], ["bench"], ["usage"]])
async def test_every_verb_has_help(verb: list[str]) -> None:
    code, out, _ = await cli(*verb, "--help")
    assert code == 0 and "usage: jupyter codestral" in out
    if verb == ["complete"]:
        assert "--cell" in out and "--line" in out and "--backend" in out


async def test_complete_prints_what_the_server_would_give(tmp_path: Path, fake_backend: FakeFimServer) -> None:
    notebook = write_notebook(tmp_path / "sales.ipynb", NOTEBOOK)
    code, out, err = await cli("complete", str(notebook), "--cell", "2", env=mistral_env(fake_backend))
    assert code == 0, err
    assert out.strip() == "df.head()" and "mistral" in err
    assert "import pandas" in fake_backend.last.body["prompt"] and "df.plot()" in fake_backend.last.body["suffix"]


async def test_complete_at_a_line_and_column(tmp_path: Path, fake_backend: FakeFimServer) -> None:
    notebook = write_notebook(tmp_path / "sales.ipynb", NOTEBOOK)
    code, out, err = await cli("complete", str(notebook), "--cell", "2", "--line", "1", "--column", "5", "--json",
                               env=mistral_env(fake_backend))
    assert code == 0, err
    assert json.loads(out)["backend"] == "mistral"
    assert fake_backend.last.body["prompt"].endswith("df = ")


async def test_complete_with_overrides_uses_another_backend(tmp_path: Path, fake_backend: FakeFimServer) -> None:
    script = tmp_path / "x.py"
    script.write_text("import numpy as np\nx = np.")
    code, out, err = await cli("complete", str(script), "--backend", "ollama", "--url", fake_backend.url,
                               "--model", "qwen2.5-coder:1.5b")
    assert code == 0, err
    assert fake_backend.last.path == "/api/generate" and fake_backend.last.body["model"] == "qwen2.5-coder:1.5b"


async def test_complete_reports_a_backend_failure_readably(tmp_path: Path, fake_backend: FakeFimServer) -> None:
    fake_backend.key = "another-key"
    notebook = write_notebook(tmp_path / "sales.ipynb", NOTEBOOK)
    code, _, err = await cli("complete", str(notebook), "--cell", "2", env=mistral_env(fake_backend))
    assert code == 2 and "CODESTRAL_API_KEY" in err and "not interchangeable" in err
    assert FAKE_KEY not in err


async def test_doctor_passes_on_a_working_setup(fake_backend: FakeFimServer) -> None:
    code, out, err = await cli("doctor", env=mistral_env(fake_backend))
    assert code == 0, out + err
    assert "a key is set (CODESTRAL_API_KEY)" in out and "test completion came back" in out
    assert "labextension is installed and enabled" in out and "All good." in out
    assert FAKE_KEY not in out + err


async def test_doctor_names_each_problem_and_its_fix(fake_backend: FakeFimServer) -> None:
    fake_backend.key = "another-key"
    code, out, _ = await cli("doctor", env=mistral_env(fake_backend))
    assert code == 1 and "✗ auth" in out and "right kind for the host" in out
    await fake_backend.stop()
    code, out, _ = await cli("doctor", env=mistral_env(fake_backend))
    assert code == 1 and "✗ unreachable" in out and "start the server" in out
    code, out, _ = await cli("doctor", env={"JUPYTER_CODESTRAL_BACKEND": "mistral"})
    assert code == 1 and "no Mistral key is set" in out


async def test_bench_compares_configurations(tmp_path: Path, fake_backend: FakeFimServer) -> None:
    folder = tmp_path / "notebooks"
    folder.mkdir()
    cells = [{"cell_type": "code", "source": f"value_{i} = compute_something({i}, scale=2.5)\nprint(value_{i})"}
             for i in range(6)]
    write_notebook(folder / "a.ipynb", cells)
    code, out, err = await cli("bench", str(folder), "--cases", "3", "--backend", "openai", "--url", fake_backend.url,
                               "--compare", "layout=inline", "layout=split", "layout=stable")
    assert code == 0, err
    assert "3 masked lines" in out and all(f"layout={name}" in out for name in ("inline", "split", "stable"))
    assert len(fake_backend.requests) == 9


async def test_complete_with_the_embedded_model(tmp_path: Path) -> None:
    cells = [{"cell_type": "code", "source": "import numpy as np\nvalues = np.array([1, 2, 3])\nmean = values."}]
    notebook = write_notebook(tmp_path / "arrays.ipynb", cells)
    code, out, err = await cli("complete", str(notebook), "--backend", "local", "--single-line")
    assert code == 0, err
    assert out.strip().startswith("mean()"), out


async def test_the_command_line_reads_the_servers_configuration_file(tmp_path: Path, fake_backend: FakeFimServer) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "jupyter_server_config.py").write_text(
        "c.CodestralExtension.backend = 'openai'\n"
        f"c.CodestralExtension.url = '{fake_backend.url}'\n"
        "c.CodestralExtension.model = 'model-from-the-config-file'\n"
    )
    script = tmp_path / "x.py"
    script.write_text("import numpy as np\nx = np.")
    code, out, err = await cli("complete", str(script), env={"JUPYTER_CONFIG_DIR": str(config)})
    assert code == 0, err
    assert fake_backend.last.path == "/v1/completions"
    assert fake_backend.last.body["model"] == "model-from-the-config-file"
    # A setting that cannot work is named, with its fix, and nothing is sent.
    (config / "jupyter_server_config.py").write_text("c.CodestralExtension.url = 'localhost:8080'\n")
    code, _, err = await cli("complete", str(script), env={"JUPYTER_CONFIG_DIR": str(config), "CODESTRAL_API_KEY": "k"})
    assert code == 2 and "CodestralExtension.url" in err and "'localhost:8080'" in err


async def test_doctor_says_a_model_file_without_its_hash_was_not_verified(tmp_path: Path) -> None:
    model = ensure_model(BUNDLED, Path(MODEL_CACHE))  # the bundled model's file, given as any other GGUF file
    code, out, err = await cli("doctor", env={"JUPYTER_CODESTRAL_BACKEND": "local", "JUPYTER_CODESTRAL_MODEL_PATH": str(model)})
    assert "not verified (no sha256 given" in out, out + err
    assert "sha256 verified" not in out


@pytest.mark.parametrize("codestral_config", [{"price_per_million": {"input": 0.3, "output": 0.9}}], indirect=True)
async def test_usage_prints_todays_table_from_the_running_server(
    complete: Any, jp_serverapp: Any, jp_http_port: int, jp_base_url: str, fake_backend: FakeFimServer,
    codestral_config: Any,
) -> None:
    for _ in range(3):
        status, _ = await complete(notebook_request())
        assert status == 200
    url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}"
    code, out, err = await cli("usage", "--url", url, "--token", jp_serverapp.identity_provider.token)
    assert code == 0, err
    header, mistral, total = out.splitlines()[1:4]
    assert header.split()[:4] == ["backend", "requests", "cancelled", "failed"] and header.endswith("cost")
    prompt = sum(p for p, _ in fake_backend.reported)
    completion = sum(c for _, c in fake_backend.reported)
    assert mistral.split()[:2] == ["mistral", "3"] and f"{prompt:,}" in mistral and total.startswith("total")
    assert mistral.split()[-1] == f"{(prompt * 0.3 + completion * 0.9) / 1e6:.4f}"
    code, out, _ = await cli("usage", "--url", url, "--token", jp_serverapp.identity_provider.token, "--json")
    assert json.loads(out)["backends"]["mistral"]["completion_tokens"] == completion


async def test_usage_without_a_server_reads_the_usage_file_or_says_why_there_is_none(tmp_path: Path) -> None:
    from jupyter_codestral.usage import Call, UsageLedger

    path = tmp_path / "usage.json"
    ledger = UsageLedger(path=path)
    ledger.record(Call("codestral", "served", 1200, 30, estimated=False, prefetch=False))
    await ledger.aclose()
    home = {"HOME": str(tmp_path), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}  # no running servers here
    code, out, _ = await cli("usage", env={**home, "JUPYTER_CODESTRAL_USAGE_FILE": str(path)})
    assert code == 0 and "codestral" in out and "1,200" in out and "no prices are set" in out
    code, _, err = await cli("usage", env=home)
    assert code == 1 and "No running Jupyter server with jupyter-codestral" in err


def routed_env(first: str, second: str, routes: dict[str, Any] | None = None) -> dict[str, str]:
    """Two named backends, the second standing in for the first (as in the README's examples)."""
    backends = {"primary": {"backend": "mistral", "url": first, "api_key_env": "CODESTRAL_API_KEY"},
                "fallback": {"backend": "openai", "url": second, "model": "qwen-fallback"}}
    return {"CODESTRAL_API_KEY": FAKE_KEY, "JUPYTER_CODESTRAL_BACKENDS": json.dumps(backends),
            "JUPYTER_CODESTRAL_ROUTES": json.dumps(routes or {"line": ["primary", "fallback"]})}


async def test_complete_follows_the_route_and_its_fallback_as_the_server_does(
    tmp_path: Path, fake_backend: FakeFimServer
) -> None:
    second = FakeFimServer()
    second.start()
    try:
        second.reset(chunks=["from", "_fallback()"])
        notebook = write_notebook(tmp_path / "sales.ipynb", NOTEBOOK)
        code, out, err = await cli("complete", str(notebook), "--cell", "2", "--json",
                                   env=routed_env(fake_backend.url, second.url))
        assert code == 0, err
        reply = json.loads(out)
        assert reply["answered_by"] == "primary" and reply["backend"] == "mistral" and reply["route"] == "line"
        assert reply["completion"] == "df.head()"
        assert second.request_count == 0
        await fake_backend.stop()  # the first backend of the route goes down: the next one answers
        code, out, err = await cli("complete", str(notebook), "--cell", "2", env=routed_env(fake_backend.url, second.url))
        assert code == 0, err
        assert out.strip() == "from_fallback()" and "fallback (openai)" in err and "Cannot reach" in err
        assert second.request_count == 1
    finally:
        await second.stop()


async def test_doctor_reports_wrong_routes_and_an_unreachable_named_backend(fake_backend: FakeFimServer) -> None:
    second = FakeFimServer()
    second.start()
    try:
        code, out, _ = await cli("doctor", env=routed_env(fake_backend.url, second.url, {"line": ["primary", "nope"]}))
        assert code == 1 and "✗" in out and "unknown backend 'nope'" in out and "JUPYTER_CODESTRAL_ROUTES" in out
        env = routed_env(fake_backend.url, second.url)
        code, out, _ = await cli("doctor", env={**env, "JUPYTER_CODESTRAL_BACKENDS": '{"primary": {"backend": "gpt"}}'})
        assert code == 1 and "unknown backend 'gpt'" in out and "JUPYTER_CODESTRAL_BACKENDS" in out
        await second.stop()
        code, out, _ = await cli("doctor", env=env)
        assert code == 1 and "a test completion came back" in out and "(backend primary)" in out
        assert "✗ unreachable" in out and "(backend fallback)" in out and "start the server" in out
        assert "line completions: primary → fallback" in out
    finally:
        await second.stop()


async def test_doctor_asks_every_named_backend_even_when_another_setting_is_wrong(fake_backend: FakeFimServer) -> None:
    """One mistake hides no other: a wrong route and a wrong backend are reported with the unreachable one."""
    second = FakeFimServer()
    second.start()
    await second.stop()  # the fallback is unreachable
    env = routed_env(fake_backend.url, second.url, {"line": ["primary", "nope"]})
    code, out, _ = await cli("doctor", env=env)
    assert code == 1 and "unknown backend 'nope'" in out, out
    assert "a test completion came back" in out and "(backend primary)" in out, out
    assert "✗ unreachable" in out and "(backend fallback)" in out, out
    backends = {"primary": {"backend": "gpt"}, "fallback": {"backend": "openai", "url": second.url, "model": "m"}}
    code, out, _ = await cli("doctor", env={**env, "JUPYTER_CODESTRAL_BACKENDS": json.dumps(backends)})
    assert code == 1 and "unknown backend 'gpt'" in out and "✗ unreachable" in out and "(backend fallback)" in out, out


async def test_doctor_prints_the_cpu_the_kernels_in_use_and_the_measured_speed() -> None:
    code, out, err = await cli("doctor", env={"JUPYTER_CODESTRAL_BACKEND": "local"})
    assert code == 0, out + err
    cpu = next(line for line in out.splitlines() if "CPU:" in line)
    assert all(f"{name} " in cpu for name in ("AVX2", "AVX-512", "AMX")), cpu
    kernels = next(line for line in out.splitlines() if "CPU kernels:" in line)
    assert "repack" in kernels and "MiB" in kernels and "AMX " not in kernels.split("weights in")[1], kernels
    assert "reads prompts at" in out and "tokens/s on this machine" in out, out
