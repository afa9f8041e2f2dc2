"""``jupyter codestral usage``: today's requests, tokens and cost per backend."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from .common import ConfigError, configured_app

USAGE_COLUMNS = (
    ("requests", "requests"),
    ("cancelled", "cancelled"),
    ("failed", "failed"),
    ("prompt_tokens", "prompt tokens"),
    ("completion_tokens", "completion tokens"),
    ("cancelled_prompt_tokens", "of which cancelled"),
)


ACCEPTANCE_COLUMNS = (
    ("shown", "shown"),
    ("accepted", "accepted"),
    ("accepted_word", "by word"),
    ("accepted_line", "by line"),
    ("dismissed", "dismissed"),
    ("chars_accepted", "characters"),
)


def acceptance_table(acceptance: dict[str, Any]) -> str:
    """What became of the suggestions shown today, a row per backend and route, then the total."""
    rows = [(f"{row['backend']} ({row['route']})", row) for row in acceptance["rows"]]
    if not rows:
        return "No suggestion was shown today (the browser counts what becomes of them)."
    rows.append(("total", acceptance["total"]))
    header = ["suggestions", *(title for _, title in ACCEPTANCE_COLUMNS), "accepted whole"]
    lines = [header]
    for name, row in rows:
        rate = row.get("rate")
        lines.append(
            [name, *(f"{row[key]:,}" for key, _ in ACCEPTANCE_COLUMNS), "-" if rate is None else f"{rate:.0%}"]
        )
    return _aligned(lines)


def _aligned(lines: list[list[str]]) -> str:
    """Rows of cells as a plain-text table: the first column to the left, the others to the right."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )


def usage_table(day: dict[str, Any]) -> str:
    """Today's usage as a plain-text table (a row per backend, then the total)."""
    rows = [*day["backends"].items(), ("total", day["total"])]
    header = ["backend", *(title for _, title in USAGE_COLUMNS), "cost"]
    lines = [header]
    for name, row in rows:
        cost = row.get("cost")
        lines.append([name, *(f"{row[key]:,}" for key, _ in USAGE_COLUMNS), "-" if cost is None else f"{cost:.4f}"])
    text = [_aligned(lines)]
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
    from ..usage import UsageLedger

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
        if "acceptance" in day:
            print()
            print(acceptance_table(day["acceptance"]))
    return 0


def add_parser(verbs: Any) -> None:
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
