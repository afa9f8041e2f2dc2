"""What completions cost: tokens per backend as the backends report them, cancelled calls, prices."""

from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import notebook_request, wait_until
from fake_backends import FakeFimServer, Script

from jupyter_codestral.usage import Call, Price, UsageLedger, today

# -- the ledger ----------------------------------------------------------------------------------


def test_prices_turn_tokens_into_money_and_bad_prices_are_named() -> None:
    ledger = UsageLedger({"codestral": Price(0.3, 0.9)}, clock=lambda: "2026-11-27")
    ledger.record(Call("codestral", "served", 1_000_000, 100_000, estimated=False, prefetch=False))
    ledger.record(Call("codestral", "cancelled", 2_000, 0, estimated=True, prefetch=False))
    ledger.record(Call("codestral", "failed", 5_000, 0, estimated=True, prefetch=False))
    ledger.record(Call("embedded", "served", 800, 20, estimated=False, prefetch=True))
    day = ledger.day()
    codestral = day["backends"]["codestral"]
    assert codestral["requests"] == 3 and codestral["cancelled"] == 1 and codestral["failed"] == 1
    assert codestral["prompt_tokens"] == 1_002_000 and codestral["cancelled_prompt_tokens"] == 2_000
    assert codestral["estimated"] == 1  # the failed call counts no tokens, estimated or not
    assert codestral["cost"] == pytest.approx(0.3 * 1.002 + 0.9 * 0.1)
    assert day["backends"]["embedded"]["cost"] is None and day["backends"]["embedded"]["prefetches"] == 1
    assert day["total"]["requests"] == 4 and day["total"]["cost"] == codestral["cost"]
    for bad in ({"input": "cheap"}, {"in": 1}, [1, 2], {"input": -1}):
        with pytest.raises(ValueError, match="backends\\['x'\\].price_per_million must be like"):
            Price.parse(bad, "backends['x'].price_per_million")


async def test_usage_is_written_only_where_a_setting_says_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "usage" / "codestral-usage.json"
    ledger = UsageLedger(path=path, clock=lambda: "2026-11-27")
    ledger.record(Call("codestral", "served", 120, 8, estimated=False, prefetch=False))
    await ledger.aclose()
    again = UsageLedger(path=path, clock=lambda: "2026-11-27")
    assert again.day()["backends"]["codestral"]["prompt_tokens"] == 120
    assert again.day("2026-11-26")["backends"] == {}
    assert UsageLedger().day()["saved_to"] is None


# -- over loopback: each wire format's own usage figures -----------------------------------------


@pytest.mark.parametrize(
    ("codestral_config", "label"),
    [
        ({}, "mistral"),
        ({"backend": "openai", "model": "qwen"}, "openai"),
        ({"backend": "ollama", "model": "qwen"}, "ollama"),
        ({"backend": "llamacpp", "model": "qwen"}, "llamacpp"),
    ],
    indirect=["codestral_config"],
)
async def test_usage_counts_match_what_the_backend_reported(
    complete: Any, fake_backend: FakeFimServer, jp_fetch: Any, label: str
) -> None:
    for _ in range(2):
        status, _ = await complete(notebook_request())
        assert status == 200
    status_body = json.loads((await jp_fetch("codestral", "status")).body)
    row = status_body["usage"]["backends"][label]
    assert len(fake_backend.reported) == 2
    assert row["requests"] == 2 and row["estimated"] == 0 and row["cancelled"] == 0
    assert row["prompt_tokens"] == sum(p for p, _ in fake_backend.reported)
    assert row["completion_tokens"] == sum(c for _, c in fake_backend.reported)


async def test_without_figures_from_the_backend_the_tokens_are_a_labelled_estimate(
    complete: Any, fake_backend: FakeFimServer, jp_fetch: Any
) -> None:
    fake_backend.script = Script(report_usage=False)
    status, body = await complete(notebook_request())
    assert status == 200
    usage = json.loads((await jp_fetch("codestral", "status")).body)["usage"]
    row = usage["backends"]["mistral"]
    assert row["estimated"] == 1 and row["prompt_tokens"] > 10 and row["completion_tokens"] >= 1
    assert "characters per token" in usage["estimate_note"]


@pytest.mark.parametrize("codestral_config", [{"price_per_million": {"input": 0.3, "output": 0.9}}], indirect=True)
async def test_a_cancelled_request_counts_its_prompt_and_the_price_applies(
    fake_backend: FakeFimServer, server_url: str, jp_fetch: Any, jp_auth_header: dict[str, str],
    codestral_config: Any,
) -> None:
    fake_backend.script = Script(chunks=["a", "b", "c"], delay_between=2.0)
    async with httpx.AsyncClient(headers=jp_auth_header, timeout=10) as client:
        await client.get(f"{server_url}/status")  # one user (the login cookie), so the newer request supersedes
        older = asyncio.create_task(client.post(f"{server_url}/complete", json=notebook_request(stream=True)))
        await wait_until(lambda: fake_backend.in_flight, 5)
        fake_backend.script = Script(chunks=["df", ".head()"])
        newer = await client.post(f"{server_url}/complete", json=notebook_request())
        assert newer.status_code == 200
        await older
    usage = json.loads((await jp_fetch("codestral", "status")).body)["usage"]
    row = usage["backends"]["mistral"]
    assert row["requests"] == 2 and row["cancelled"] == 1 and row["cancelled_prompt_tokens"] > 0
    assert row["prompt_tokens"] > row["cancelled_prompt_tokens"]
    expected = (row["prompt_tokens"] * 0.3 + row["completion_tokens"] * 0.9) / 1e6
    assert row["cost"] == pytest.approx(expected, abs=1e-6) and usage["total"]["cost"] == row["cost"]


@pytest.mark.parametrize("codestral_config", [{"price_per_million": {"input": "free"}}], indirect=True)
async def test_a_bad_price_is_a_readable_configuration_error(jp_fetch: Any, codestral_config: Any) -> None:
    status = json.loads((await jp_fetch("codestral", "status")).body)
    assert "CodestralExtension.price_per_million must be like" in status["config_error"]


def test_the_day_is_the_local_date() -> None:
    assert today() == datetime.date.today().isoformat()


# -- what users do with the suggestions ----------------------------------------------------------------------


REPORT = {"rows": [
    {"backend": "mistral", "route": "line", "shown": 5, "accepted": 2, "accepted_word": 1, "dismissed": 2,
     "chars_accepted": 31},
    {"backend": "mistral", "route": "block", "shown": 2, "accepted_line": 1, "dismissed": 1, "chars_accepted": 12},
]}


async def test_what_the_browser_counts_of_its_suggestions_is_in_the_status_per_backend_and_route(
    jp_fetch: Any, tmp_path: Path
) -> None:
    for _ in range(2):
        response = await jp_fetch("codestral", "acceptance", method="POST", body=json.dumps(REPORT))
        assert response.code == 204
    acceptance = json.loads((await jp_fetch("codestral", "status")).body)["usage"]["acceptance"]
    line = next(row for row in acceptance["rows"] if row["route"] == "line")
    assert (line["backend"], line["shown"], line["accepted"], line["dismissed"], line["chars_accepted"]) == (
        "mistral", 10, 4, 4, 62)
    assert line["rate"] == 0.4
    assert acceptance["total"]["shown"] == 14 and acceptance["total"]["accepted_line"] == 2


@pytest.mark.parametrize(("body", "status", "says"), [
    (b"{not json", 400, "not valid JSON"),
    (json.dumps({"rows": [{"backend": "m", "route": "line", "shown": -1}]}).encode(), 400, "shown must be a whole"),
    (json.dumps({"rows": [{"backend": "m", "route": "sideways"}]}).encode(), 400, "route must be one of"),
    (json.dumps({"rows": [{"backend": "m", "route": "line", "surprise": 1}]}).encode(), 400, "unknown field"),
    (json.dumps({"rows": [{"backend": "m", "route": "line"}] * 201}).encode(), 413, "more than 200 rows"),
    (json.dumps({"rows": [{"backend": "m", "route": "line", "shown": 1.5}]}).encode(), 400, "whole number"),
])
async def test_a_bad_acceptance_report_gets_a_readable_4xx(jp_fetch: Any, body: bytes, status: int, says: str) -> None:
    response = await jp_fetch("codestral", "acceptance", method="POST", body=body, raise_error=False)
    assert response.code == status and says in json.loads(response.body)["error"]["message"]


async def test_acceptance_is_written_only_with_a_usage_file_and_read_back(tmp_path: Path) -> None:
    from jupyter_codestral.acceptance import parse_report

    path = tmp_path / "usage.json"
    ledger = UsageLedger(path=path, clock=lambda: "2026-12-04")
    ledger.record_acceptance(parse_report(json.dumps(REPORT).encode()))
    await ledger.aclose()
    again = UsageLedger(path=path, clock=lambda: "2026-12-04")
    assert again.day()["acceptance"]["total"]["shown"] == 7
    memory = UsageLedger(clock=lambda: "2026-12-04")
    memory.record_acceptance(parse_report(json.dumps(REPORT).encode()))
    await memory.aclose()
    assert memory.path is None and memory.day()["acceptance"]["total"]["shown"] == 7  # counted, written nowhere
