"""``jupyter codestral``: complete, doctor, bench, redact and usage from the command line.

The verbs use the same configuration as the server extension (traitlets
config files, then environment variables, then the command-line overrides),
so what they print is what the server would do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from .backends import Backend, create_backend
from .backends.base import BackendSettings
from .config import backend_settings, config_error, context_budget
from .context import ContextBudget
from .errors import CompletionError
from .evaluation import pick_cases, read_cells, score
from .pipeline import run_completion
from .redaction import PLACEHOLDER, apply_spans, secret_spans
from .request import CompletionRequest, parse_completion_request
from .stats import percentile
from .templates import LAYOUTS

if TYPE_CHECKING:
    from .app import CodestralExtension


class ConfigError(ValueError):
    """The configuration cannot work; the message says what to change."""


def configured_app(args: argparse.Namespace) -> CodestralExtension:
    """The extension's settings as the server reads them (its config files, then the environment),
    then the command line's own flags."""
    from jupyter_server.serverapp import ServerApp

    from .app import CodestralExtension

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


def load_settings(args: argparse.Namespace) -> tuple[BackendSettings, ContextBudget]:
    app = configured_app(args)
    problem = config_error(app)
    if problem:
        raise ConfigError(problem)
    return backend_settings(app), context_budget(app)


class ModelProgress:
    """A progress bar for the embedded model's preparation, fed by the worker's state."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.state = ""

    def update(self, state: str, progress: float | None) -> None:
        if state != self.state:
            self.close()
            self.state = state
            if state in ("assembling", "verifying"):
                self.bar = tqdm(total=100, desc=f"{state} the model", unit="%", file=sys.stderr)
            elif state == "loading":
                print("loading the model…", file=sys.stderr)
        if self.bar is not None and progress is not None:
            self.bar.n = round(progress * 100)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


async def ready_backend(settings: BackendSettings, timeout: float = 600) -> Backend:
    backend = create_backend(settings)
    await backend.start()
    progress = ModelProgress()
    deadline = time.monotonic() + timeout
    try:
        while backend.state not in ("ready", "error") and time.monotonic() < deadline:
            progress.update(backend.state, getattr(backend, "progress", None))
            await asyncio.sleep(0.1)
    finally:
        progress.close()
    if backend.state != "ready":
        fatal = getattr(backend, "fatal", None) or f"the backend did not get ready ({backend.state})"
        await backend.aclose()
        raise CompletionError("loading", fatal, 503)
    return backend


async def final_event(
    request: CompletionRequest, backend: Backend, budget: ContextBudget, max_tokens: int
) -> dict[str, Any]:
    """The ``done`` event of one completion (the command line does not stream)."""
    async with aclosing(run_completion(request, backend, budget, max_tokens)) as events:
        async for event in events:
            if "done" in event:
                return event
    raise CompletionError("failed", "The completion ended without a result.", 502)


# -- complete -------------------------------------------------------------------


def cursor_from_line_column(source: str, line: int, column: int) -> int:
    """Offset of 1-based ``line`` and 0-based ``column``, as editors show them."""
    lines = source.split("\n")
    if not 1 <= line <= len(lines):
        raise SystemExit(f"--line {line} is outside the cell (it has {len(lines)} lines).")
    if not 0 <= column <= len(lines[line - 1]):
        raise SystemExit(f"--column {column} is outside line {line} ({len(lines[line - 1])} characters).")
    return sum(len(text) + 1 for text in lines[: line - 1]) + column


def position_body(args: argparse.Namespace) -> dict[str, Any]:
    """The request body for the position the command line names (a notebook's cell, or a file)."""
    path = Path(args.file)
    if path.suffix == ".ipynb":
        cells = read_cells(path)
        if not 0 <= args.cell < len(cells):
            raise SystemExit(f"--cell {args.cell} is out of range (the notebook has {len(cells)} cells).")
        source = cells[args.cell]["source"]
        body: dict[str, Any] = {"cells": cells, "cell_index": args.cell}
    else:
        source = path.read_text(encoding="utf-8")
        body = {"text": source}
    if args.line is not None:
        cursor = cursor_from_line_column(source, args.line, args.column or 0)
    else:
        cursor = len(source) if args.cursor is None else args.cursor
    return body | {"cursor": cursor, "path": str(path), "single_line": args.single_line}


async def complete_command(args: argparse.Namespace) -> int:
    settings, budget = load_settings(args)
    body = position_body(args)
    request = parse_completion_request(json.dumps(body).encode())
    backend = await ready_backend(settings)
    try:
        event = await final_event(request, backend, budget, settings.max_tokens)
        if args.json:
            print(json.dumps({"completion": event["completion"], **backend.describe(), "timings": event["timings"]}))
        else:
            print(event["completion"])
            t = event["timings"]
            print(
                f"[{settings.backend} · {settings.model}: first text {t['first_token_ms']:.0f} ms, "
                f"total {t['total_ms']:.0f} ms]",
                file=sys.stderr,
            )
    finally:
        await backend.aclose()
    return 0


# -- redact -------------------------------------------------------------------------


def document_cells(path: Path) -> list[dict[str, Any]]:
    """A notebook's cells, or a file as one cell."""
    return read_cells(path) if path.suffix == ".ipynb" else [{"source": path.read_text(encoding="utf-8")}]


async def redact_command(args: argparse.Namespace) -> int:
    """Show each line of a notebook or file that redaction changes, as a remote backend would receive it."""
    path = Path(args.file)
    cells = document_cells(path)
    found = 0
    for index, cell in enumerate(cells):
        source = cell["source"]
        spans = secret_spans(source)
        if not spans:
            continue
        found += len(spans)
        sent = apply_spans(source, spans).split("\n")
        for number, (line, after) in enumerate(zip(source.split("\n"), sent, strict=False), start=1):
            if line != after:
                where = f"cell {index}, line {number}" if path.suffix == ".ipynb" else f"line {number}"
                print(f"{where}: {after}")
    print(f"{found} secret{'s' if found != 1 else ''} would be replaced by {PLACEHOLDER} before leaving this machine.")
    return 0


# -- doctor -----------------------------------------------------------------------


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


async def doctor_command(args: argparse.Namespace) -> int:
    report = Report()
    print("Configuration")
    try:
        settings, budget = load_settings(args)
    except ConfigError as error:
        report.fail(str(error), "correct the setting or environment variable named above")
        return 1
    where = settings.url if settings.backend != "embedded" else (settings.model_path or settings.model)
    report.ok(f"backend {settings.backend}, model {settings.model}, {where}")
    report.ok(f"context budget: {budget.prefix_tokens} tokens before the cursor, {budget.suffix_tokens} after")

    if settings.backend == "mistral":
        if settings.api_key:
            report.ok(f"a key is set ({settings.key_name}) for {settings.url}")
        else:
            report.fail(
                "no Mistral key is set",
                "export CODESTRAL_API_KEY (codestral.mistral.ai) or MISTRAL_API_KEY (api.mistral.ai)",
            )

    print("Backend")
    try:
        backend = await ready_backend(settings)
    except CompletionError as error:
        report.fail(error.message, "see the message; `jupyter codestral doctor` again after fixing it")
        backend = None
    if backend is not None:
        if settings.backend == "embedded":
            report.ok(model_verdict(settings))
        source = "import numpy as np\nx = np.zeros(3)\nprint(x.sh"
        probe = {
            "cells": [{"cell_type": "code", "source": source}],
            "cell_index": 0,
            "cursor": len(source),
            "max_tokens": 4,
        }
        try:
            request = parse_completion_request(json.dumps(probe).encode())
            event = await final_event(request, backend, budget, 4)
            report.ok(f"a test completion came back in {event['timings']['total_ms']:.0f} ms ({event['completion']!r})")
        except CompletionError as error:
            fixes = {
                "auth": "check the key, and that it is the right kind for the host (Codestral keys: "
                "codestral.mistral.ai; Mistral keys: api.mistral.ai)",
                "unreachable": "start the server or correct JUPYTER_CODESTRAL_URL",
                "timeout": "the server is too slow or stuck; check it, or raise CodestralExtension.timeout",
                "rate_limited": "wait, or use a key with a higher limit",
            }
            report.fail(
                f"{error.kind}: {settings.redact(error.message)}", fixes.get(error.kind, "see the message above")
            )
        finally:
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


# -- bench ------------------------------------------------------------------------


def parse_config(text: str) -> dict[str, str]:
    """``layout=split,model=...`` → overrides for one configuration of a comparison."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    bad = [p[0] for p in pairs if len(p) != 2 or p[0] not in ("backend", "url", "model", "layout")]
    if bad:
        raise SystemExit(f"--compare takes key=value pairs of backend, url, model, layout; not {bad}")
    return {k.strip(): v.strip() for k, v in pairs}


async def bench_one(args: argparse.Namespace, overrides: dict[str, str], cases: Sequence[Any]) -> dict[str, Any]:
    ns = argparse.Namespace(**{**vars(args), **overrides})
    settings, budget = load_settings(ns)
    backend = await ready_backend(settings)
    first, total, exact, similarity = [], [], [], []
    try:
        for case in tqdm(cases, desc=f"{settings.backend} {settings.layout}", unit="case", file=sys.stderr):
            request = parse_completion_request(json.dumps(case.request(stream=False)).encode())
            event = await final_event(request, backend, budget, settings.max_tokens)
            first.append(event["timings"]["first_token_ms"])
            total.append(event["timings"]["total_ms"])
            hit, sim = score(event["completion"], case.target)
            exact.append(hit)
            similarity.append(sim)
    finally:
        await backend.aclose()
    return {
        "label": ", ".join(f"{k}={v}" for k, v in overrides.items()) or f"{settings.backend} (configured)",
        "first": first,
        "total": total,
        "exact": exact,
        "similarity": similarity,
    }


def p95(values: list[float]) -> float:
    return percentile(sorted(values), 0.95)


async def bench_command(args: argparse.Namespace) -> int:
    cases = pick_cases(Path(args.folder), args.cases, args.seed)
    configs = [parse_config(c) for c in args.compare] if args.compare else [{}]
    rows = [await bench_one(args, overrides, cases) for overrides in configs]
    print(f"{len(cases)} masked lines from {args.folder} (seed {args.seed})")
    print(
        f"{'configuration':<32}{'exact':>7}{'edit sim':>10}{'first ms p50':>14}{'p95':>8}{'total ms p50':>14}{'p95':>8}"
    )
    for row in rows:
        n = max(1, len(row["exact"]))
        print(
            f"{row['label'][:31]:<32}{sum(row['exact']) / n:>7.2f}{sum(row['similarity']) / n:>10.3f}"
            f"{statistics.median(row['first']):>14.0f}{p95(row['first']):>8.0f}"
            f"{statistics.median(row['total']):>14.0f}{p95(row['total']):>8.0f}"
        )
    return 0


# -- entry point --------------------------------------------------------------------


# -- usage -------------------------------------------------------------------------------------

USAGE_COLUMNS = (
    ("requests", "requests"),
    ("cancelled", "cancelled"),
    ("failed", "failed"),
    ("prompt_tokens", "prompt tokens"),
    ("completion_tokens", "completion tokens"),
    ("cancelled_prompt_tokens", "of which cancelled"),
)


def usage_table(day: dict[str, Any]) -> str:
    """Today's usage as a plain-text table (a row per backend, then the total)."""
    rows = [*day["backends"].items(), ("total", day["total"])]
    header = ["backend", *(title for _, title in USAGE_COLUMNS), "cost"]
    lines = [header]
    for name, row in rows:
        cost = row.get("cost")
        lines.append([name, *(f"{row[key]:,}" for key, _ in USAGE_COLUMNS), "-" if cost is None else f"{cost:.4f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    ]
    notes = []
    estimated = day["total"].get("estimated", 0)
    if estimated:
        notes.append(
            f"* tokens of {estimated} request(s) are estimates ({day['estimate_note']}); the others are the "
            "backends' own figures."
        )
    if not day["prices"]:
        notes.append("* no prices are set (price_per_million in CodestralExtension.backends), so no cost is shown.")
    return "\n".join([*text, *notes])


async def server_usage(url: str, token: str) -> dict[str, Any]:
    import aiohttp
    from yarl import URL

    headers = {"Authorization": f"token {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with (
            aiohttp.ClientSession(headers=headers, timeout=timeout) as session,
            # As given: a base URL's escapes ("/user%40host/") must reach the server unchanged.
            session.get(URL(f"{url.rstrip('/')}/codestral/status", encoded=True)) as response,
        ):
            if response.status != 200:
                raise ConfigError(f"{url} answered {response.status} to codestral/status (is the token right?).")
            usage: dict[str, Any] = (await response.json())["usage"]
    except aiohttp.ClientError as error:
        raise ConfigError(f"Cannot read codestral/status at {url}: {error}") from None
    return usage


def running_servers() -> list[dict[str, Any]]:
    from jupyter_server.serverapp import list_running_servers

    return list(list_running_servers())


async def usage_command(args: argparse.Namespace) -> int:
    """Print today's usage of the running server(s), or of the usage file when none runs."""
    from .usage import UsageLedger

    servers = [{"url": args.url, "token": args.token or ""}] if args.url else running_servers()
    days: list[tuple[str, dict[str, Any]]] = []
    for server in servers:
        try:
            days.append((f"the server at {server['url']}", await server_usage(server["url"], server.get("token", ""))))
        except (ConfigError, OSError, KeyError, ValueError) as error:
            if args.url:
                raise ConfigError(str(error)) from None
            continue  # a server without this extension, or one that stopped
    if not days:
        app = configured_app(args)
        if not app.usage_file:
            print(
                "No running Jupyter server with jupyter-codestral was found. Usage is counted while a server runs "
                "(set CodestralExtension.usage_file to keep it across restarts).",
                file=sys.stderr,
            )
            return 1
        ledger = await asyncio.to_thread(UsageLedger, path=app.usage_file)
        days.append((f"the usage file {app.usage_file}", ledger.day()))
    for where, day in days:
        if args.json:
            print(json.dumps({"source": where, **day}, indent=1))
            continue
        print(f"Usage on {day['date']}, from {where}:")
        print(usage_table(day))
    return 0


def add_backend_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", help="mistral, openai, ollama, llamacpp or embedded (overrides the configuration)")
    parser.add_argument("--model", help="model name (overrides the configuration)")
    parser.add_argument("--url", help="backend base URL (overrides the configuration)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jupyter codestral", description=__doc__.split("\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="{complete,doctor,bench,redact,usage}")

    complete = verbs.add_parser(
        "complete",
        help="print the completion the server would give",
        description="Print the completion the server would give at a position.",
    )
    complete.add_argument("file", help="a notebook (.ipynb) or a source file")
    complete.add_argument("--cell", type=int, default=0, help="cell index in the notebook (from 0)")
    complete.add_argument("--cursor", type=int, help="offset in the cell (default: its end)")
    complete.add_argument("--line", type=int, help="line in the cell, from 1 (with --column)")
    complete.add_argument("--column", type=int, help="column in that line, from 0")
    complete.add_argument("--single-line", action="store_true", help="complete one line only")
    complete.add_argument("--json", action="store_true", help="print the reply as JSON")
    add_backend_flags(complete)
    complete.set_defaults(run=complete_command)

    doctor = verbs.add_parser(
        "doctor",
        help="check the configuration end to end",
        description="Check the configuration end to end and say what to fix.",
    )
    add_backend_flags(doctor)
    doctor.set_defaults(run=doctor_command)

    bench = verbs.add_parser(
        "bench",
        help="quality and latency over a folder of notebooks",
        description="Mask the rest of code lines in real notebooks, complete them, and report "
        "exact match, edit similarity and latency.",
    )
    bench.add_argument("folder", help="a folder of .ipynb files")
    bench.add_argument("--cases", type=int, default=20, help="how many masked lines (default 20)")
    bench.add_argument("--seed", type=int, default=7, help="case selection seed (default 7)")
    bench.add_argument(
        "--compare",
        nargs="+",
        metavar="CONFIG",
        help="configurations to run side by side on the same cases, e.g. layout=stable layout=split",
    )
    add_backend_flags(bench)
    bench.add_argument("--layout", choices=LAYOUTS, help="prompt layout")
    bench.set_defaults(run=bench_command)

    redact = verbs.add_parser(
        "redact",
        help="show what redaction replaces in a notebook before it is sent",
        description="Print every line of a notebook (or a file) in which credentials would be replaced before a "
        "prompt is sent to a remote backend, as it would be sent.",
    )
    redact.add_argument("file", help="a notebook (.ipynb) or a source file")
    redact.set_defaults(run=redact_command)

    usage = verbs.add_parser(
        "usage",
        help="today's requests, tokens and cost per backend",
        description="Print today's requests, tokens and cost per backend, from the running Jupyter server(s), or "
        "from CodestralExtension.usage_file when no server runs.",
    )
    usage.add_argument("--url", help="a server's base URL (default: every running Jupyter server)")
    usage.add_argument("--token", help="that server's token")
    usage.add_argument("--json", action="store_true", help="print the figures as JSON")
    usage.set_defaults(run=usage_command)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], Any] = args.run
    try:
        code = asyncio.run(run(args))
    except CompletionError as error:
        print(f"error: {error.message}", file=sys.stderr)
        code = 2
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
