"""``jupyter codestral doctor``: the configuration checked end to end, each problem with its fix."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..assembly import Assembly, assemble, named_backends, named_specs
from ..backends import create_backend
from ..backends.base import Backend, BackendSettings
from ..embedded.cpu import cpu_flags, cpu_model
from ..errors import CompletionError, ErrorKind
from ..options import CodestralOptions
from ..pipeline import run_completion
from ..request import parse_completion_request
from ..router import Direct, Router
from .common import add_backend_flags, configured_app, until_ready

# What to do about a failed test completion, by its kind.
FIXES = {
    ErrorKind.AUTH: "check the key, and that it is the right kind for the host (Codestral keys: "
    "codestral.mistral.ai; Mistral keys: api.mistral.ai)",
    ErrorKind.UNREACHABLE: "start the server or correct its URL (JUPYTER_CODESTRAL_URL, or the url of the "
    "named backend)",
    ErrorKind.TIMEOUT: "the server is too slow or stuck; check it, or raise CodestralExtension.timeout",
    ErrorKind.RATE_LIMITED: "wait, or use a key with a higher limit",
}
# A small completion every backend can make quickly.
PROBE_SOURCE = "import numpy as np\nx = np.zeros(3)\nprint(x.sh"


class Report:
    def __init__(self) -> None:
        self.failures = 0

    def ok(self, what: str) -> None:
        print(f"  ✓ {what}")

    def fail(self, what: str, fix: str) -> None:
        self.failures += 1
        print(f"  ✗ {what}\n      fix: {fix}")


def labextension_state() -> tuple[bool, bool]:
    """(installed, enabled) for the frontend, from JupyterLab's own paths and page config."""
    from jupyter_core.paths import jupyter_config_path, jupyter_path

    installed = any(Path(p, "jupyter-codestral", "package.json").exists() for p in jupyter_path("labextensions"))
    enabled = True
    for folder in jupyter_config_path():
        page = Path(folder, "labconfig", "page_config.json")
        if page.exists():
            try:
                disabled = json.loads(page.read_text()).get("disabledExtensions", {})
            except ValueError:
                continue
            if any(key.startswith("jupyter-codestral") and value for key, value in disabled.items()):
                enabled = False
    return installed, enabled


def model_verdict(settings: BackendSettings) -> str:
    """What was checked of the embedded model's file before the worker loaded it."""
    if settings.model_path is None:
        return "the bundled model file is present and its sha256 verified; the worker loaded it"
    if settings.model_sha256:
        return f"{settings.model_path}: its sha256 verified; the worker loaded it"
    return (
        f"{settings.model_path}: loaded, but not verified (no sha256 given: set "
        "CodestralExtension.model_sha256 to have it checked before every load)"
    )


# The settings of the single backend: a problem with one of them leaves nothing to ask.
BACKEND_SETTINGS = {"backend", "url", "model", "api_key", "model_path", "model_sha256", "fim_template"}


@dataclass
class Checked:
    """The backends the doctor asks, by the name users see (``named``: of CodestralExtension.backends)."""

    backends: dict[str, Backend]
    named: bool
    own: list[Backend] = field(default_factory=list)  # built here (the routes could not be): closed here

    def label(self, name: str) -> str:
        return f" (backend {name})" if self.named else ""


def backends_to_check(assembly: Assembly, options: CodestralOptions) -> Checked:
    """Every backend the service may ask; where the routes cannot work, still every named backend that
    can (one mistake hides no other)."""
    completer = assembly.service.completer
    if isinstance(completer, Router):
        return Checked(completer.backends, True)
    if named_backends(options):
        specs, _ = named_specs(options, os.environ)
        built = {name: create_backend(spec.settings) for name, spec in specs.items()}
        for name, backend in built.items():
            backend.label = name
        return Checked(built, True, list(built.values()))
    assert isinstance(completer, Direct)
    if any(problem.setting in BACKEND_SETTINGS for problem in assembly.problems):
        return Checked({}, False)
    return Checked({completer.backend.label: completer.backend}, False)


def describe_configuration(assembly: Assembly, checked: Checked, report: Report) -> None:
    service = assembly.service
    completer = service.completer
    for name, backend in checked.backends.items():
        settings = backend.settings
        where = settings.url if settings.backend != "embedded" else (settings.model_path or settings.model)
        named = checked.label(name)
        report.ok(f"backend {settings.backend}, model {settings.model}, {where}{named}")
        if settings.backend == "mistral":
            if settings.api_key:
                report.ok(f"a key is set ({settings.key_name}) for {settings.url}{named}")
            else:
                report.fail(
                    f"no Mistral key is set{named}",
                    "export CODESTRAL_API_KEY (codestral.mistral.ai) or MISTRAL_API_KEY (api.mistral.ai)"
                    + (" or set api_key_env for this backend" if named else ""),
                )
    if isinstance(completer, Router):
        for kind, route in completer.routes.items():
            report.ok(f"{kind} completions: {' → '.join(route.backends)}")
    budget = service.budget
    report.ok(f"context budget: {budget.prefix_tokens} tokens before the cursor, {budget.suffix_tokens} after")


def report_cpu(report: Report) -> None:
    """The CPU features that decide llama.cpp's kernels."""
    flags = cpu_flags()

    def said(name: str, feature: str, *more: str) -> str:
        extra = [flag for flag in more if flag in flags]
        return f"{name} {'yes' if feature in flags else 'no'}" + (f" ({' '.join(extra)})" if extra else "")

    features = ", ".join(
        [
            said("AVX2", "avx2"),
            said("AVX-512", "avx512f", "avx512_vnni"),
            said("AMX", "amx_tile", "amx_int8", "amx_bf16"),
        ]
    )
    report.ok(f"CPU: {cpu_model()}; {features}")


def report_kernels(backend: Backend, named: str, report: Report) -> None:
    """The embedded model's kernels, its weights' buffer types, and the speed its self-check measured."""
    info = backend.describe()
    cpu = info.get("cpu")
    if info.get("notice"):
        report.fail(info["notice"] + named, "see the README's performance section on CPU kernels")
    if not cpu:
        return
    buffers = ", ".join(f"{name} {size:.0f} MiB" for name, size in sorted(cpu["buffers"].items())) or "unknown"
    report.ok(f"CPU kernels: {cpu['kernels']} ({cpu['note']}); weights in {buffers}; {cpu['threads']} threads{named}")
    report.ok(
        f"the embedded model reads prompts at {cpu['read_tokens_per_s']:.0f} tokens/s and writes "
        f"{cpu['write_tokens_per_s']:.0f} tokens/s on this machine (its self-check, {cpu['read_tokens']} tokens){named}"
    )


async def check_backend(name: str, backend: Backend, checked: Checked, assembly: Assembly, report: Report) -> None:
    """The backend started, and a test completion asked of it alone."""
    named = checked.label(name)
    embedded = backend.settings.backend == "embedded"
    try:
        await until_ready(backend)
    except CompletionError as error:
        report.fail(f"{error.message}{named}", "see the message; `jupyter codestral doctor` again after fixing it")
        if embedded:
            report_kernels(backend, named, report)
        return
    if embedded:
        report.ok(model_verdict(backend.settings) + named)
        report_kernels(backend, named, report)
    probe = {"cells": [{"cell_type": "code", "source": PROBE_SOURCE}], "cell_index": 0, "cursor": len(PROBE_SOURCE)}
    try:
        request = parse_completion_request(json.dumps(probe).encode())
        done: dict[str, Any] = {}
        async for event in run_completion(request, Direct(backend), assembly.service.budget, 4):
            done = event
        ms = done["timings"]["total_ms"]
        report.ok(f"a test completion came back in {ms:.0f} ms ({done['completion']!r}){named}")
    except CompletionError as error:
        report.fail(
            f"{error.kind}: {backend.settings.redact(error.message)}{named}",
            FIXES.get(error.kind, "see the message above"),
        )


async def doctor_command(args: argparse.Namespace) -> int:
    report = Report()
    print("Configuration")
    options = configured_app(args)
    assembly = assemble(options)
    checked = backends_to_check(assembly, options)
    try:
        for problem in dict.fromkeys(p.message for p in assembly.problems):
            report.fail(problem, "correct the setting or environment variable named above")
        describe_configuration(assembly, checked, report)
        if any(b.settings.backend == "embedded" for b in checked.backends.values()):
            report_cpu(report)
        if checked.backends:
            print("Backends" if checked.named else "Backend")
        for name, backend in checked.backends.items():
            await check_backend(name, backend, checked, assembly, report)
    finally:
        await assembly.service.aclose()
        for backend in checked.own:
            await backend.aclose()

    print("JupyterLab")
    installed, enabled = labextension_state()
    if installed and enabled:
        report.ok("the jupyter-codestral labextension is installed and enabled")
    elif installed:
        report.fail("the labextension is disabled", "jupyter labextension enable jupyter-codestral")
    else:
        report.fail("the labextension is not installed", "pip install jupyter-codestral (it ships prebuilt)")
    from jupyter_core.paths import jupyter_config_path
    from jupyter_server.extension.config import ExtensionConfigManager

    manager = ExtensionConfigManager(read_config_path=jupyter_config_path())
    if manager.enabled("jupyter_codestral"):  # type: ignore[no-untyped-call]
        report.ok("the jupyter_codestral server extension is enabled")
    else:
        report.fail("the server extension is not enabled", "jupyter server extension enable jupyter_codestral")

    print("All good." if not report.failures else f"{report.failures} problem(s) found.")
    return 1 if report.failures else 0


def add_parser(verbs: Any) -> None:
    doctor = verbs.add_parser(
        "doctor",
        help="check the configuration end to end",
        description="Check the configuration end to end (every named backend) and say what to fix.",
    )
    add_backend_flags(doctor)
    doctor.set_defaults(run=doctor_command)
