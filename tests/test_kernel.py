"""Kernel-aware completions against real kernels started by the test."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import notebook_request, run, settle, the_app
from fake_backends import FakeFimServer

# Real IPython kernels.
pytestmark = pytest.mark.slow


@pytest.fixture
def sales_csv(tmp_path: Path) -> Path:
    path = tmp_path / "sales.csv"
    path.write_text("order_id,customer_region,unit_price\n1,north,2.5\n2,south,3.0\n")
    return path


async def test_the_summary_reflects_a_dataframe_and_disturbs_nothing(
    jp_serverapp: Any, complete: Any, fake_backend: FakeFimServer, sales_csv: Path, kernel: Any
) -> None:
    kernel_id, client = kernel
    await run(client, f"import pandas as pd\ndf = pd.read_csv({str(sales_csv)!r})\n"
                      "def total(price, qty=1):\n    return price * qty\nsettings = {'rate': 0.2, 'currency': 'EUR'}")
    await settle(jp_serverapp, kernel_id)
    observe = ("print(get_ipython().execution_count, len(In), len(Out), "
               "[k for k in globals() if k in ('g', 'summarize') or 'codestral' in k])")
    before = (await run(client, observe))[0].split(" ", 3)
    await settle(jp_serverapp, kernel_id)
    code, _ = await complete(notebook_request(kernel_id=kernel_id))
    assert code == 200
    prompt = fake_backend.last.body["prompt"]
    head = prompt[: prompt.index("\n\n# %%\n")]
    assert head.startswith("# %% [variables in the running kernel]")
    assert "# df: DataFrame, 2 rows, columns {'order_id': int64, 'customer_region': " in head
    assert "'unit_price': float64}" in head
    assert "# def total(price, qty=1)" in head and "# pd = module pandas" in head
    assert "# settings: dict, keys ['rate', 'currency']" in head
    # Names the nearest other cells use first (`pd` one cell up, `df` two cells down),
    # then the rest as the kernel lists them, most recently defined first.
    assert head.index("pd =") < head.index("df:") < head.index("settings") < head.index("def total")
    # Nothing changed for the user: no execution counted, no history, no output, no names left.
    # (The observing cell itself counts once.)
    after = (await run(client, observe))[0].split(" ", 3)
    assert int(after[0]) == int(before[0]) + 1 and int(after[1]) == int(before[1]) + 1
    assert after[2] == before[2] == "0" and after[3] == before[3] == "[]\n"


async def test_it_is_refreshed_after_executions_not_per_keystroke(
    jp_serverapp: Any, complete: Any, fake_backend: FakeFimServer, kernel: Any
) -> None:
    kernel_id, client = kernel
    namespace = the_app(jp_serverapp).service.kernels
    await run(client, "alpha = 1")
    await settle(jp_serverapp, kernel_id)
    for _ in range(3):
        await complete(notebook_request(kernel_id=kernel_id))
        await asyncio.sleep(0.6)  # past the grace period for our own activity
    assert namespace.queries == 1
    await run(client, "beta = [1, 2, 3]")
    await settle(jp_serverapp, kernel_id)
    await complete(notebook_request(kernel_id=kernel_id))
    assert namespace.queries == 2
    assert "# beta: list of int, 3 items" in fake_backend.last.body["prompt"]


async def test_a_busy_kernel_does_not_delay_a_completion(
    jp_serverapp: Any, complete: Any, fake_backend: FakeFimServer, kernel: Any
) -> None:
    kernel_id, client = kernel
    await run(client, "gamma = 3.5")
    await settle(jp_serverapp, kernel_id)
    await complete(notebook_request(kernel_id=kernel_id))
    client.execute("import time\ntime.sleep(5)\ndelta = 1")
    await settle(jp_serverapp, kernel_id, "busy")
    started = time.monotonic()
    code, _ = await complete(notebook_request(kernel_id=kernel_id))
    assert code == 200 and time.monotonic() - started < 1.0
    # The last summary is used meanwhile.
    assert "# gamma: float = 3.5" in fake_backend.last.body["prompt"]
    assert "delta" not in fake_backend.last.body["prompt"]


@pytest.mark.parametrize("kernel", ["echo"], indirect=True)
async def test_a_non_python_kernel_gets_no_summary(
    jp_serverapp: Any, complete: Any, fake_backend: FakeFimServer, echo_kernel_spec: Any, kernel: Any
) -> None:
    kernel_id, client = kernel
    code, reply = await complete(notebook_request(kernel_id=kernel_id))
    assert code == 200 and reply["timings"]["kernel_summary"] is False
    assert "Variables in the running kernel" not in fake_backend.last.body["prompt"]
    assert the_app(jp_serverapp).service.kernels.queries == 0


async def test_an_unknown_kernel_id_is_harmless(complete: Any, fake_backend: FakeFimServer) -> None:
    code, reply = await complete(notebook_request(kernel_id="no-such-kernel"))
    assert code == 200 and reply["timings"]["kernel_summary"] is False


@pytest.mark.parametrize("codestral_config", [{"kernel_context": False}], indirect=True)
async def test_the_setting_turns_it_off(jp_serverapp: Any, complete: Any, fake_backend: FakeFimServer,
                                        codestral_config: Any, kernel: Any) -> None:
    kernel_id, client = kernel
    await run(client, "epsilon = 5")
    await settle(jp_serverapp, kernel_id)
    code, _ = await complete(notebook_request(kernel_id=kernel_id))
    assert code == 200 and "epsilon" not in fake_backend.last.body["prompt"]
