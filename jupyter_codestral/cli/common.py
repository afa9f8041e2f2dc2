"""What the verbs share: the server's configuration, the service assembled from it, one completion."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from ..assembly import Assembly, assemble
from ..backends.base import BackendState
from ..errors import CompletionError, ErrorKind
from ..request import CompletionRequest
from ..router import Completer

if TYPE_CHECKING:
    from ..app import CodestralExtension

# The user the command line's requests are served for (the service keys "newest request wins" on it).
CLI_USER = "command-line"


class ConfigError(ValueError):
    """The configuration cannot work; the message says what to change."""


def configured_app(args: argparse.Namespace) -> CodestralExtension:
    """The extension's settings as the server reads them (its config files, then the environment),
    then the command line's own flags."""
    from jupyter_server.serverapp import ServerApp

    from ..app import CodestralExtension

    server = ServerApp()
    server.load_config_file()  # jupyter_server_config.py / .json, from the Jupyter config path
    app = CodestralExtension(serverapp=server)
    app.load_config_file()  # jupyter_jupyter_codestral_config, as the server does when it links the extension
    app.update_config(server.config)
    for flag, trait in (("backend", "backend"), ("url", "url"), ("model", "model"), ("layout", "prompt_layout")):
        value = getattr(args, flag, None)
        if value:
            setattr(app, trait, value)
    return app


def configured(args: argparse.Namespace) -> Assembly:
    """The service the server would run with this configuration (no kernels: none run here)."""
    return assemble(configured_app(args))


def add_backend_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", help="mistral, openai, ollama, llamacpp or embedded (overrides the configuration)")
    parser.add_argument("--model", help="model name (overrides the configuration)")
    parser.add_argument("--url", help="backend base URL (overrides the configuration)")


class ModelProgress:
    """A progress bar for the embedded model's preparation, fed by the worker's state."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.state = ""

    def update(self, state: str, progress: float | None) -> None:
        if state != self.state:
            self.close()
            self.state = state
            if state in (BackendState.ASSEMBLING, BackendState.VERIFYING):
                self.bar = tqdm(total=100, desc=f"{state} the model", unit="%", file=sys.stderr)
            elif state == BackendState.LOADING:
                print("loading the model…", file=sys.stderr)
        if self.bar is not None and progress is not None:
            self.bar.n = round(progress * 100)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


async def until_ready(completer: Completer | Any, timeout: float = 600) -> None:
    """Start ``completer`` (a completer or a backend) and wait until it can answer, showing the
    embedded model's preparation; CompletionError if it cannot."""
    await completer.start()
    progress = ModelProgress()
    deadline = time.monotonic() + timeout
    try:
        settled = (BackendState.READY, BackendState.ERROR, BackendState.FAILED)
        while completer.state not in settled and time.monotonic() < deadline:
            info = completer.describe()
            progress.update(str(info.get("state", completer.state)), info.get("progress"))
            await asyncio.sleep(0.1)
    finally:
        progress.close()
    if completer.state != BackendState.READY:
        info = completer.describe()
        fatal = info.get("notice") or info.get("fatal") or f"the backend did not get ready ({completer.state})"
        kind = ErrorKind.WORKER_CRASHED if completer.state == BackendState.FAILED else ErrorKind.LOADING
        raise CompletionError(kind, fatal, 503)


@asynccontextmanager
async def running(assembly: Assembly) -> AsyncIterator[Assembly]:
    """The assembled service, ready to answer (closed afterwards); ConfigError for a configuration that
    cannot work."""
    if assembly.config_error:
        await assembly.service.aclose()
        raise ConfigError(assembly.config_error)
    try:
        await until_ready(assembly.service.completer)
        yield assembly
    finally:
        await assembly.service.aclose()


async def final_event(assembly: Assembly, request: CompletionRequest) -> dict[str, Any]:
    """The ``done`` event of one completion, served as the server serves it (routes, fallback)."""
    done: dict[str, Any] | None = None
    async for event in assembly.service.serve(request, CLI_USER):
        if event.get("done"):
            done = event
    if done is None:
        raise CompletionError(ErrorKind.FAILED, "The completion ended without a result.", 502)
    return done
