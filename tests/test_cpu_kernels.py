"""llama.cpp's CPU kernels: AMX kept out (its kernels crash on some Intel CPUs), a self-check before ready,
and a worker that crashes at start-up restarted more safely, then failed, with the status saying so.

The crash is real native code (a segmentation fault in the worker process), injected by
``JUPYTER_CODESTRAL_WORKER_FAULT`` so that no AMX hardware is needed; the model is the real one.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from conftest import the_app
from fake_backends import FakeFimServer

from jupyter_codestral.backends.embedded import (
    MAX_CRASHES,
    WorkerConfig,
    exit_reason,
    fatal_signal,
    safer_configs,
    stepped_down,
)
from jupyter_codestral.embedded.cpu import FAULT_ENV, Kernels, buffer_sizes, build_features, injected_fault

NOTEBOOK = [
    {"cell_type": "code", "source": "import numpy as np"},
    {"cell_type": "code", "source": "values = np.array([1, 2, 3, 4])\nmean = values."},
]


def body(**kw: Any) -> dict[str, Any]:
    return {"cells": NOTEBOOK, "cell_index": 1, "cursor": len(NOTEBOOK[1]["source"]), "path": "a.ipynb", **kw}


def in_a_process(code: str) -> str:
    """Run ``code`` in a new interpreter (a seccomp filter cannot be taken back) and return its output."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


# -- without the model ------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform != "linux", reason="seccomp is Linux's")
def test_amx_is_refused_to_the_process_and_nothing_else_is() -> None:
    out = in_a_process(
        "import errno, os, subprocess\n"
        "from jupyter_codestral.embedded import cpu\n"
        "before = cpu.amx_permission_errno()\n"
        "cpu.deny_amx()\n"
        "after = cpu.amx_permission_errno()\n"
        "child = subprocess.run(['true']).returncode\n"  # fork, exec, files: all still allowed
        "print(before, after, child, len(os.listdir('/')) > 0)\n"
    )
    before, after, child, listed = out.split()
    assert int(after) == 1, "asking for AMX must give EPERM once refused"  # errno.EPERM
    assert int(before) != 1  # granted (0) on an AMX CPU, EOPNOTSUPP or EINVAL elsewhere: not our refusal
    assert child == "0" and listed == "True"


def test_the_default_keeps_repacking_and_refuses_amx_on_a_cpu_that_has_it() -> None:
    out = in_a_process(
        "import json\n"
        "from jupyter_codestral.embedded.cpu import Kernels, guard_process, amx_permission_errno\n"
        "amx = {'avx2', 'avx512f', 'amx_tile', 'amx_int8', 'amx_bf16'}\n"
        "results = {}\n"
        "for name, kernels, flags in [('plain', Kernels.PLAIN, amx), ('amx', Kernels.AMX, amx),\n"
        "                             ('no-amx-cpu', Kernels.REPACK, {'avx2'}), ('repack', Kernels.REPACK, amx)]:\n"
        "    g = guard_process(kernels, flags)\n"
        "    results[name] = [g.amx_denied, g.extra_buffers, g.note]\n"
        "results['errno'] = amx_permission_errno()\n"
        "print(json.dumps(results))\n"
    )
    results = json.loads(out)
    assert results["plain"][:2] == [False, False]
    assert results["amx"][:2] == [False, True]
    assert results["no-amx-cpu"][:2] == [False, True] and "no AMX" in results["no-amx-cpu"][2]
    assert results["repack"][:2] == [True, True] and "AMX refused" in results["repack"][2]
    assert results["errno"] == 1  # the last guard refused it for real


def test_what_llama_cpp_reports_is_read() -> None:
    log = [
        "load_tensors: loading model tensors, this can take a while... (mmap = true)\n",
        "load_tensors:   CPU_REPACK model buffer size =   116.77 MiB\n",
        "load_tensors:   CPU_Mapped model buffer size =   373.71 MiB\n",
        "load_tensors:          AMX model buffer size =   225.48 MiB\n",
    ]
    assert buffer_sizes(log) == {"CPU_REPACK": 116.77, "CPU_Mapped": 373.71, "AMX": 225.48}
    info = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 0 | AMX_INT8 = 1 | REPACK = 1 | "
    assert build_features(info) == {"SSE3": True, "AVX": True, "AVX2": True, "AVX512": False, "AMX_INT8": True,
                                    "REPACK": True}


def test_the_injected_fault_spares_only_the_configuration_it_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "segfault-unless:plain")
    assert injected_fault(Kernels.REPACK, 2) and not injected_fault(Kernels.PLAIN, 2)
    monkeypatch.setenv(FAULT_ENV, "segfault-unless:plain/1")
    assert injected_fault(Kernels.PLAIN, 2) and not injected_fault(Kernels.PLAIN, 1)
    monkeypatch.setenv(FAULT_ENV, "segfault")
    assert injected_fault(Kernels.PLAIN, 1)
    monkeypatch.delenv(FAULT_ENV)
    assert not injected_fault(Kernels.AMX, 2)


def test_each_safer_configuration_and_what_the_status_says_of_it() -> None:
    assert safer_configs(Kernels.REPACK, None) == [
        WorkerConfig(Kernels.REPACK, None), WorkerConfig(Kernels.PLAIN, None), WorkerConfig(Kernels.PLAIN, 1)
    ]
    assert safer_configs(Kernels.PLAIN, 1) == [WorkerConfig(Kernels.PLAIN, 1)]
    assert len(safer_configs(Kernels.AMX, 4)) == MAX_CRASHES
    said = stepped_down(WorkerConfig(Kernels.AMX, None), WorkerConfig(Kernels.PLAIN, None), amx_cpu=True)
    assert said == "The embedded model crashed with AMX kernels on this CPU; running without them, slower"
    said = stepped_down(WorkerConfig(Kernels.PLAIN, None), WorkerConfig(Kernels.PLAIN, 1), amx_cpu=False)
    assert said == "The embedded model crashed with no extra CPU kernels; running on one thread, slower"


def test_a_crash_is_named_by_its_signal_even_where_the_exit_status_was_lost() -> None:
    assert exit_reason(-11) == "killed by SIGSEGV" and exit_reason(3) == "exit code 3"
    # asyncio reports 255 for a child something else reaped first; the worker's faulthandler said why.
    assert fatal_signal("Fatal Python error: Segmentation fault") == signal.SIGSEGV
    assert fatal_signal("Fatal Python error: Aborted") == signal.SIGABRT
    assert fatal_signal("  File \"engine.py\", line 138 in decode") is None
    assert exit_reason(255, signal.SIGSEGV) == "killed by SIGSEGV" and exit_reason(255) == "exit code 255"


@pytest.mark.slow
def test_the_worker_names_the_signal_that_kills_it_on_stderr() -> None:
    """The real worker and model, crashing at its self-check's first decode as the AMX kernels do."""
    crashed = subprocess.run(
        [sys.executable, "-m", "jupyter_codestral.embedded.worker", "--disk-mb", "0"],
        input="", capture_output=True, text=True, timeout=240, check=False, env={**os.environ, FAULT_ENV: "segfault"},
    )
    assert '"state": "checking"' in crashed.stdout, crashed.stdout[-400:]
    assert crashed.returncode == -signal.SIGSEGV, crashed.stderr[-400:]
    assert [named for line in crashed.stderr.splitlines() if (named := fatal_signal(line))] == [signal.SIGSEGV]


# -- the worker, with the real model, behind the server ---------------------------------------------


async def status_of(jp_fetch: Any) -> dict[str, Any]:
    return json.loads((await jp_fetch("codestral", "status")).body)


async def until_settled(jp_fetch: Any, timeout: float = 240.0) -> tuple[dict[str, Any], list[str]]:
    """The status once the embedded model is ready or failed, and the states seen on the way."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        status = await status_of(jp_fetch)
        state = status["state"] if "backends" not in status else status["backends"]["embedded"]["state"]
        if not seen or seen[-1] != state:
            seen.append(state)
        if state in ("ready", "failed", "error"):
            return status, seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"the embedded model neither got ready nor failed; states seen: {seen}")


@pytest.fixture
def fault(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The injected fault (parametrized), in the environment before the server starts its worker."""
    value = str(getattr(request, "param", ""))
    if value:
        monkeypatch.setenv(FAULT_ENV, value)
    else:
        monkeypatch.delenv(FAULT_ENV, raising=False)
    return value


@pytest.fixture
def codestral_config(fault: str) -> dict[str, Any]:
    return {"backend": "embedded"}


@pytest.mark.slow
async def test_the_worker_checks_its_kernels_before_ready_and_says_which_it_uses(
    jp_fetch: Any, complete: Any, fault: str
) -> None:
    status, seen = await until_settled(jp_fetch)
    assert "checking" in seen and status["state"] == "ready", seen
    cpu = status["cpu"]
    assert cpu["kernels"] == "repack" and cpu["extra_buffers"] and not status["notice"]
    assert cpu["read_tokens"] > 16 and cpu["read_tokens_per_s"] > 0 and cpu["write_tokens_per_s"] > 0
    assert "AMX" not in cpu["buffers"] and cpu["buffers"], cpu  # never the AMX buffer by default
    if "avx2" in cpu["features"]:
        assert "CPU_REPACK" in cpu["buffers"], cpu  # the repacked kernels are kept where they apply
    if "amx_tile" in cpu["features"] and "AMX_INT8" in cpu["build"]:
        assert cpu["amx_denied"], cpu
    code, reply = await complete(body())
    assert code == 200 and reply["completion"].startswith("mean()"), reply


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["segfault-unless:plain"], indirect=True)
async def test_a_worker_that_crashes_at_start_up_runs_without_extra_kernels_and_says_so(
    jp_fetch: Any, complete: Any, jp_serverapp: Any, fault: str
) -> None:
    status, seen = await until_settled(jp_fetch)
    assert status["state"] == "ready", (status, seen)
    assert "restarting" in seen or status["restarts"] == 1, seen
    assert status["restarts"] == 1 and status["cpu"]["kernels"] == "plain" and not status["cpu"]["extra_buffers"]
    assert "CPU_REPACK" not in status["cpu"]["buffers"]
    notice = status["notice"]
    assert notice.startswith("The embedded model crashed with llama.cpp's repacked CPU kernels on this CPU; "
                             "running without them, slower (prompts read at "), notice
    assert "tokens/s" in notice
    code, reply = await complete(body())
    assert code == 200 and reply["completion"].startswith("mean()"), reply


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["segfault"], indirect=True)
async def test_a_worker_that_always_crashes_ends_failed_with_a_readable_503(
    jp_fetch: Any, complete: Any, fault: str
) -> None:
    status, seen = await until_settled(jp_fetch)
    assert status["state"] == "failed" and not status["ready"], (status, seen)
    assert status["restarts"] == MAX_CRASHES - 1
    assert status["notice"].startswith("The embedded model cannot run on this machine: its worker crashed 3 times")
    assert "SIGSEGV" in status["notice"] and "on one thread" in status["notice"]
    code, reply = await complete(body())
    assert code == 503, reply
    assert reply["error"]["kind"] == "worker_crashed" and "cannot run on this machine" in reply["error"]["message"]
    await asyncio.sleep(1.0)
    assert (await status_of(jp_fetch))["state"] == "failed"  # not restarted forever


class TestAFailedModelFallsBackToTheRoutesNextBackend:
    @pytest.fixture
    def codestral_config(self, fault: str, fake_backend: FakeFimServer) -> dict[str, Any]:
        fake_backend.reset(chunks=["mean()"])
        return {
            "backends": {
                "embedded": {"backend": "embedded"},
                "remote": {"backend": "openai", "url": fake_backend.url, "model": "m"},
            },
            "routes": {"line": ["embedded", "remote"], "block": ["embedded", "remote"]},
        }

    @pytest.mark.slow
    @pytest.mark.parametrize("fault", ["segfault"], indirect=True)
    async def test_it(self, jp_fetch: Any, complete: Any, fake_backend: FakeFimServer) -> None:
        code, reply = await complete(body())  # starts the embedded model, the route's first backend
        assert code == 200 and reply["backend"] == "remote", reply  # (not ready yet: the next one answers)
        status, seen = await until_settled(jp_fetch)
        embedded = status["backends"]["embedded"]
        assert embedded["state"] == "failed" and "cannot run on this machine" in embedded["notice"], seen
        code, reply = await complete(body())
        assert code == 200, reply
        assert reply["backend"] == "remote" and reply["completion"] == "mean()"
