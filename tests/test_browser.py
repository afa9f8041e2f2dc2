"""JupyterLab in a real browser: ghost text streams in while typing, Tab accepts it.

JupyterLab is started by the test with the extension installed; Debian's
Chromium is driven by Playwright.  The first case uses a loopback
Mistral-protocol backend (so the test can check what reached it), the second
the embedded model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import MODEL_CACHE, write_notebook
from fake_backends import FAKE_KEY, FakeFimServer, Script
from playwright.sync_api import Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

# JupyterLab in a real browser.
pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]
# The README's screenshot is refreshed only on request, so a test run leaves the tree clean:
# CODESTRAL_UPDATE_SCREENSHOT=1 pytest tests/test_browser.py
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "ghost-text.png"

CELLS = [
    ("markdown", "# Sales\nTotal revenue per order."),
    ("code", "import pandas as pd\ndf = pd.DataFrame({'price': [1.0, 2.5], 'qty': [3, 4]})"),
    ("code", "total = (df['price'] * df['qty'])"),
    ("code", "print(total)"),
]


PYTHON_NOTEBOOK = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}


class ThreadedFake:
    """The loopback backend on its own event loop, so the synchronous browser test can run."""

    def __init__(self) -> None:
        self.fake = FakeFimServer()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self._start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)

    async def _start(self) -> None:
        self.fake.start()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def start_lab(tmp_path: Path, extra: list[str], env: dict[str, str], app: str = "jupyterlab",
              page: str = "lab/tree", cells: list[tuple[str, str]] = CELLS, notebook: str = "sales.ipynb",
              tags: dict[int, list[str]] | None = None) -> Iterator[str]:
    """Start JupyterLab (or Notebook 7 with app="notebook", page="notebooks"); yield the notebook's URL.

    ``tags``: cell index -> the cell's tags."""
    port, token = free_port(), secrets.token_hex(12)
    root = tmp_path / "root"
    root.mkdir()
    (root / notebook).parent.mkdir(parents=True, exist_ok=True)
    tags = tags or {}
    write_notebook(root / notebook, [{"cell_type": t, "source": s, "metadata": {"tags": tags[i]} if i in tags else {}}
                                     for i, (t, s) in enumerate(cells)], PYTHON_NOTEBOOK)
    home = tmp_path / "home"
    home.mkdir()
    child_env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("JUPYTER_CODESTRAL")}
    child_env |= {"HOME": str(home), "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_CODESTRAL_CACHE_DIR": MODEL_CACHE, **env}
    cmd = [
        # A fresh HOME and config folder: no user settings or workspaces carry over.
        sys.executable, "-m", app, "--no-browser", "--allow-root", f"--port={port}", "--ip=127.0.0.1",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", *extra,
    ]
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(cmd, env=child_env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/api/status", headers={"Authorization": f"token {token}"}, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "lab.log").read_text()
            time.sleep(0.2)
        yield f"{base}/{page}/{notebook}?token={token}"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def lab_with_backend(tmp_path: Path, fake: FakeFimServer, *flags: str, **kw: Any) -> AbstractContextManager[str]:
    """JupyterLab (or Notebook 7) configured for the loopback Mistral-protocol backend."""
    return start_lab(
        tmp_path,
        ["--CodestralExtension.backend=mistral", f"--CodestralExtension.url={fake.url}", *flags],
        {"CODESTRAL_API_KEY": FAKE_KEY},
        **kw,
    )


@pytest.fixture
def fake_backend_threaded() -> Iterator[FakeFimServer]:
    threaded = ThreadedFake()
    yield threaded.fake
    threaded.close()


@pytest.fixture
def browser_page() -> Iterator[Page]:
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed: apt-get install chromium"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        yield page
        browser.close()


def open_notebook(page: Page, url: str) -> None:
    page.goto(url, timeout=90_000)
    page.wait_for_selector(".jp-Notebook .jp-CodeCell .cm-content", timeout=90_000)
    page.wait_for_selector(".jp-CodestralStatus", timeout=30_000)
    news = page.locator(".jp-toast-button", has_text="No")  # JupyterLab's "get news?" toast
    if news.count():
        news.first.click()


def type_at_end_of_cell(page: Page, index: int, text: str) -> None:
    editor = page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".cm-content")
    editor.click()
    page.keyboard.press("Control+End")
    page.keyboard.type(text, delay=60)


def cell_text(page: Page, index: int) -> str:
    lines = page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".cm-content .cm-line").all_inner_texts()
    return "\n".join(lines)


def ghost_texts_while_streaming(page: Page, timeout: float) -> list[str]:
    """Poll the ghost text until it stops changing; return every distinct state seen."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    stable_since = None
    while time.monotonic() < deadline:
        ghost = page.locator(".jp-GhostText")
        text = ghost.first.inner_text() if ghost.count() else ""
        if text and (not seen or seen[-1] != text):
            seen.append(text)
            stable_since = time.monotonic()
        if seen and stable_since and time.monotonic() - stable_since > 1.5:
            break
        time.sleep(0.03)
    return seen


def test_ghost_text_streams_in_and_tab_accepts_it(tmp_path: Path, fake_backend_threaded: FakeFimServer, browser_page: Page) -> None:
    fake = fake_backend_threaded
    fake.script = Script(chunks=["s", "um", "()"], delay_between=0.4)
    with lab_with_backend(tmp_path, fake) as url:
        page = browser_page
        open_notebook(page, url)
        type_at_end_of_cell(page, 2, ".")
        states = ghost_texts_while_streaming(page, timeout=20)
        assert states and states[-1] == "sum()", states
        assert len(states) >= 2, f"the text should arrive in pieces, saw {states}"  # it streamed
        page.wait_for_timeout(200)
        page.screenshot(path=str(DOCS_SCREENSHOT if os.environ.get("CODESTRAL_UPDATE_SCREENSHOT") else tmp_path / "ghost.png"))
        page.keyboard.press("Tab")
        page.wait_for_function(
            "() => document.querySelectorAll('.jp-GhostText').length === 0", timeout=10_000
        )
        assert cell_text(page, 2) == "total = (df['price'] * df['qty']).sum()"
        # What reached the backend: earlier cells in the prompt, later ones in the suffix.
        sent = fake.last.body
        assert "import pandas as pd" in sent["prompt"] and "# # Sales" in sent["prompt"]
        assert sent["prompt"].endswith("total = (df['price'] * df['qty']).")
        assert "print(total)" in sent["suffix"] and "print(total)" not in sent["prompt"]
        assert fake.last.headers["Authorization"] == f"Bearer {FAKE_KEY}"
        status = page.locator(".jp-CodestralStatus").inner_text()
        assert "Codestral" in status and "error" not in status, status


def test_a_backend_error_is_shown_once_with_its_reason(tmp_path: Path, fake_backend_threaded: FakeFimServer, browser_page: Page) -> None:
    fake = fake_backend_threaded
    fake.key = "some-other-key"  # our key is refused: 401
    with lab_with_backend(tmp_path, fake) as url:
        page = browser_page
        open_notebook(page, url)
        type_at_end_of_cell(page, 2, ".")
        status = page.locator(".jp-CodestralStatus")
        page.wait_for_function(
            "() => document.querySelector('.jp-CodestralStatus')?.dataset.state === 'error'", timeout=20_000
        )
        assert "CODESTRAL_API_KEY" in (status.get_attribute("title") or "")
        assert FAKE_KEY not in (status.get_attribute("title") or "")


def test_the_embedded_model_completes_in_the_browser(tmp_path: Path, browser_page: Page) -> None:
    with start_lab(tmp_path, ["--CodestralExtension.backend=local"], {}) as url:
        page = browser_page
        open_notebook(page, url)
        page.wait_for_function(
            "() => document.querySelector('.jp-CodestralStatus')?.dataset.state === 'ready'", timeout=120_000
        )
        type_at_end_of_cell(page, 2, ".")
        states = ghost_texts_while_streaming(page, timeout=60)
        assert states, "no ghost text from the embedded model"
        page.keyboard.press("Tab")
        page.wait_for_function("() => document.querySelectorAll('.jp-GhostText').length === 0", timeout=10_000)
        text = cell_text(page, 2)
        assert text == "total = (df['price'] * df['qty'])." + states[-1], (text, states)


@pytest.mark.parametrize(
    ("fault", "label", "said"),
    [
        ("segfault-unless:plain", "ready", "The embedded model crashed with llama.cpp's repacked CPU kernels on this CPU"),
        ("segfault", "embedded model failed", "The embedded model cannot run on this machine"),
    ],
    ids=["steps down", "fails"],
)
def test_the_status_item_says_in_a_sentence_that_the_model_crashed_at_start_up(
    tmp_path: Path, browser_page: Page, fault: str, label: str, said: str
) -> None:
    """A worker crash injected at its first decode (no AMX CPU needed): the bar says what became of it."""
    env = {"JUPYTER_CODESTRAL_WORKER_FAULT": fault}
    with start_lab(tmp_path, ["--CodestralExtension.backend=embedded"], env) as url:
        page = browser_page
        open_notebook(page, url)
        status = page.locator(".jp-CodestralStatus")
        page.wait_for_function(
            "() => ['ready', 'error'].includes(document.querySelector('.jp-CodestralStatus')?.dataset.state)",
            timeout=240_000,
        )
        text, title = status.inner_text(), status.get_attribute("title") or ""
        assert f"Codestral: {label}" in text and said in title, (text, title)
        if label == "ready":
            assert "safe mode" in text, text
            type_at_end_of_cell(page, 2, ".")
            assert ghost_texts_while_streaming(page, timeout=60), "no ghost text from the model in safe mode"


def test_it_works_in_notebook_7(tmp_path: Path, fake_backend_threaded: FakeFimServer, browser_page: Page) -> None:
    fake = fake_backend_threaded
    fake.script = Script(chunks=["s", "um", "()"], delay_between=0.2)
    with lab_with_backend(tmp_path, fake, app="notebook", page="notebooks") as url:
        page = browser_page
        page.goto(url, timeout=90_000)
        page.wait_for_selector(".jp-Notebook .jp-CodeCell .cm-content", timeout=90_000)
        type_at_end_of_cell(page, 2, ".")
        states = ghost_texts_while_streaming(page, timeout=20)
        assert states and states[-1] == "sum()", states
        page.keyboard.press("Tab")
        page.wait_for_function("() => document.querySelectorAll('.jp-GhostText').length === 0", timeout=10_000)
        assert cell_text(page, 2) == "total = (df['price'] * df['qty']).sum()"


def test_the_status_item_turns_completions_off_and_tab_still_indents(
    tmp_path: Path, fake_backend_threaded: FakeFimServer, browser_page: Page
) -> None:
    fake = fake_backend_threaded
    with lab_with_backend(tmp_path, fake) as url:
        page = browser_page
        open_notebook(page, url)
        status = page.locator(".jp-CodestralStatus")
        page.wait_for_function("() => document.querySelector('.jp-CodestralStatus')?.dataset.state === 'ready'",
                               timeout=30_000)
        status.click()
        page.wait_for_function("() => document.querySelector('.jp-CodestralStatus')?.dataset.state === 'off'",
                               timeout=10_000)
        seen = len(fake.requests)
        type_at_end_of_cell(page, 2, ".")
        page.wait_for_timeout(1500)
        assert page.locator(".jp-GhostText").count() == 0 and len(fake.requests) == seen
        # With no suggestion shown, Tab does what it always does: indent by one level.
        page.keyboard.press("Enter")
        page.keyboard.type("x")
        before = cell_text(page, 2)
        page.keyboard.press("Home")
        page.keyboard.press("Tab")
        after = cell_text(page, 2)
        assert after.rsplit("\n", 1)[1] == "    " + before.rsplit("\n", 1)[1]
        status.click()  # and back on
        page.wait_for_function("() => document.querySelector('.jp-CodestralStatus')?.dataset.state !== 'off'",
                               timeout=10_000)


def test_the_status_item_says_until_when_it_is_rate_limited(
    tmp_path: Path, fake_backend_threaded: FakeFimServer, browser_page: Page
) -> None:
    fake = fake_backend_threaded
    fake.script = Script(status=429, headers={"Retry-After": "120"}, error_body={"message": "Requests rate limit exceeded"})
    with lab_with_backend(tmp_path, fake) as url:
        page = browser_page
        open_notebook(page, url)
        type_at_end_of_cell(page, 2, ".")
        page.wait_for_function(
            "() => document.querySelector('.jp-CodestralStatus')?.textContent.includes('rate limited until')",
            timeout=20_000,
        )
        sent = len(fake.requests)
        page.keyboard.type("s", delay=300)
        page.wait_for_timeout(1000)
        assert len(fake.requests) == sent  # nothing is sent before the retry-after passes


def test_the_cell_asked_about_is_the_one_whose_editor_asked(
    tmp_path: Path, fake_backend_threaded: FakeFimServer, browser_page: Page
) -> None:
    """Two cells hold the same text: the request is about the second, where the cursor is."""
    fake = fake_backend_threaded
    cells = [("code", "a = 1"), ("code", "total = compute("), ("code", "b = 2"), ("code", "total = compute(")]
    with start_lab(tmp_path, ["--CodestralExtension.backend=mistral", f"--CodestralExtension.url={fake.url}"],
                   {"CODESTRAL_API_KEY": FAKE_KEY}, cells=cells) as url:
        page = browser_page
        open_notebook(page, url)
        editor = page.locator(".jp-Notebook .jp-Cell").nth(3).locator(".cm-content")
        editor.click()
        page.keyboard.press("Control+End")
        page.keyboard.press("Alt+Backslash")  # ask for a suggestion here, without typing
        page.wait_for_function("() => document.querySelectorAll('.jp-GhostText').length > 0", timeout=20_000)
        sent = fake.last.body
        # The cell between the two is above the cursor: it is in the prompt, not in the suffix.
        assert "b = 2" in sent["prompt"] and sent["prompt"].endswith("total = compute(")
        assert "b = 2" not in sent["suffix"]


def test_a_notebook_under_a_disabled_path_says_course_policy_and_shows_nothing(
    tmp_path: Path, fake_backend_threaded: FakeFimServer, browser_page: Page
) -> None:
    fake = fake_backend_threaded
    policy = "--CodestralExtension.disabled_paths=['exams/**']"
    with lab_with_backend(tmp_path, fake, policy, notebook="exams/final.ipynb") as url:
        page = browser_page
        open_notebook(page, url)
        page.wait_for_function("() => document.querySelector('.jp-CodestralStatus')?.dataset.state === 'policy'",
                               timeout=30_000)
        assert "course policy" in page.locator(".jp-CodestralStatus").inner_text()
        type_at_end_of_cell(page, 2, ".")
        page.wait_for_timeout(1500)
        assert page.locator(".jp-GhostText").count() == 0 and fake.request_count == 0


def test_a_no_completion_cell_shows_nothing_and_the_next_cell_does(
    tmp_path: Path, fake_backend_threaded: FakeFimServer, browser_page: Page
) -> None:
    fake = fake_backend_threaded
    fake.script = Script(chunks=["sum()"])
    with lab_with_backend(tmp_path, fake, tags={2: ["exercise", "no-completion"]}) as url:
        page = browser_page
        open_notebook(page, url)
        type_at_end_of_cell(page, 2, ".")
        page.wait_for_function("() => document.querySelector('.jp-CodestralStatus')?.dataset.state === 'policy'",
                               timeout=20_000)
        assert "off in this cell" in page.locator(".jp-CodestralStatus").inner_text()
        assert page.locator(".jp-GhostText").count() == 0 and fake.request_count == 0
        type_at_end_of_cell(page, 3, "\nprint(total.")
        page.wait_for_function("() => document.querySelector('.jp-GhostText')?.innerText === 'sum()'", timeout=20_000)
        assert fake.request_count >= 1


def wait_cell_source(page: Page, index: int, expected: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (now := cell_source(page, index)) != expected:
        assert time.monotonic() < deadline, f"cell {index} holds {now!r}, not {expected!r}"
        time.sleep(0.1)


def cell_source(page: Page, index: int) -> str:
    """The cell's text without the ghost text shown in it."""
    content = page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".cm-content")
    return str(content.evaluate(
        """el => {
            const copy = el.cloneNode(true);
            copy.querySelectorAll('.jp-GhostText').forEach(g => g.remove());
            return [...copy.querySelectorAll('.cm-line')].map(l => l.textContent).join('\\n');
        }"""
    ))


def ghost(page: Page) -> str:
    found = page.locator(".jp-GhostText")
    return found.first.inner_text() if found.count() else ""


def wait_ghost(page: Page, text: str, timeout: float = 20_000) -> None:
    page.wait_for_function(
        "t => (document.querySelector('.jp-GhostText')?.innerText ?? '') === t", arg=text, timeout=timeout
    )


SURVIVAL_CELLS = [*CELLS, ("code", "")]


@contextmanager
def suggestion_shown(tmp_path: Path, fake: FakeFimServer, page: Page, chunks: list[str]) -> Iterator[int]:
    """JupyterLab with the user at ``rates = `` in a new cell and the suggestion ``chunks`` shown;
    yields the number of requests the backend has had."""
    fake.script = Script(chunks=chunks)
    with lab_with_backend(tmp_path, fake, cells=SURVIVAL_CELLS) as url:
        open_notebook(page, url)
        type_at_end_of_cell(page, 4, "rates = ")
        wait_ghost(page, "".join(chunks))
        yield fake.request_count


def test_typing_along_the_suggestion_asks_nothing_and_keeps_the_rest(
    tmp_path: Path, fake_backend_threaded: FakeFimServer, browser_page: Page
) -> None:
    fake, page = fake_backend_threaded, browser_page
    with suggestion_shown(tmp_path, fake, page, ["survival_rate", "_by_class()"]) as asked:
        expected = ["urvival_rate_by_class()", "rvival_rate_by_class()", "vival_rate_by_class()",
                    "ival_rate_by_class()"]
        rests = []
        for ch, rest in zip("surv", expected, strict=True):
            page.keyboard.type(ch)
            # Waiting for the rest, not a fixed time: a busy machine may take a frame or two to draw it.
            with contextlib.suppress(PlaywrightTimeoutError):
                wait_ghost(page, rest, timeout=5000)
            rests.append(ghost(page))
        page.wait_for_timeout(1200)  # well past the debounce: the provider was asked, and answered itself
        assert rests == expected, rests
        assert ghost(page) == "ival_rate_by_class()"
        assert fake.request_count == asked
        # Deleting the last character and typing it again: the same suggestion, no request.
        page.keyboard.press("Backspace")
        wait_ghost(page, "vival_rate_by_class()", timeout=5000)
        page.keyboard.type("v")
        wait_ghost(page, "ival_rate_by_class()", timeout=5000)
        page.wait_for_timeout(800)
        assert fake.request_count == asked
        # Departing from it asks again.
        page.keyboard.type("x")
        page.wait_for_timeout(1500)
        assert fake.request_count > asked


def test_accepting_the_next_word_and_the_next_line(
    tmp_path: Path, fake_backend_threaded: FakeFimServer, browser_page: Page
) -> None:
    fake, page = fake_backend_threaded, browser_page
    with suggestion_shown(tmp_path, fake, page, ["survival_rate_by_class()\n", "print(rates)"]) as asked:
        page.keyboard.press("Control+ArrowRight")
        wait_ghost(page, "()\nprint(rates)", timeout=5000)
        assert cell_source(page, 4) == "rates = survival_rate_by_class"
        page.keyboard.press("Control+Shift+ArrowRight")
        wait_ghost(page, "print(rates)", timeout=5000)
        assert cell_source(page, 4) == "rates = survival_rate_by_class()\n"
        assert fake.request_count == asked
        # With no ghost text, Ctrl+ArrowRight moves the cursor by a word, as always.
        page.keyboard.press("ArrowUp")  # moving the cursor away dismisses the ghost text
        page.wait_for_function("() => !document.querySelector('.jp-GhostText')", timeout=5000)
        page.keyboard.press("Home")
        page.keyboard.press("Control+ArrowRight")
        page.keyboard.type("X")
        assert cell_source(page, 4).startswith("ratesX = survival_rate_by_class()"), cell_source(page, 4)


def test_with_the_first_backend_down_the_fallback_answers_and_the_bar_says_so(
    tmp_path: Path, fake_backend_threaded: FakeFimServer, browser_page: Page
) -> None:
    fallback = fake_backend_threaded
    fallback.script = Script(chunks=["sum()"])
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    backends = json.dumps({"codestral": {"backend": "mistral", "url": down},
                           "fallback": {"backend": "mistral", "url": fallback.url}})
    routes = json.dumps({"line": ["codestral", "fallback"], "block": ["codestral", "fallback"]})
    with lab_with_backend(tmp_path, fallback, f"--CodestralExtension.backends={backends}",
                          f"--CodestralExtension.routes={routes}") as url:
        page = browser_page
        open_notebook(page, url)
        type_at_end_of_cell(page, 2, ".")
        wait_ghost(page, "sum()")
        page.wait_for_function("() => document.querySelector('.jp-CodestralStatus')?.dataset.state === 'fallback'",
                               timeout=20_000)
        label = page.locator(".jp-CodestralStatus").inner_text()
        assert "codestral unavailable until" in label and "using fallback" in label, label
        title = page.locator(".jp-CodestralStatus").get_attribute("title") or ""
        assert "connect" in title.lower()
        # The tooltip also says what today's completions used, per backend.
        assert "Usage today" in title and "fallback: " in title and "tokens in" in title, title


def status_json(page: Page) -> dict[str, Any]:
    """``codestral/status`` as the page's JupyterLab reads it (its login cookie)."""
    return page.evaluate("async () => (await fetch('/codestral/status')).json()")  # type: ignore[no-any-return]


def test_what_becomes_of_the_suggestions_is_counted_and_shown(
    tmp_path: Path, fake_backend_threaded: FakeFimServer, browser_page: Page
) -> None:
    fake, page = fake_backend_threaded, browser_page
    with suggestion_shown(tmp_path, fake, page, ["survival_rate", "_by_class()"]) as _:
        page.keyboard.press("Tab")  # accepted whole
        page.wait_for_function("() => document.querySelectorAll('.jp-GhostText').length === 0", timeout=10_000)
        fake.script = Script(chunks=["print(rates)"])
        page.keyboard.press("Enter")
        page.keyboard.press("Alt+Backslash")
        wait_ghost(page, "print(rates)")
        page.keyboard.press("Escape")  # dismissed
        page.wait_for_function("() => document.querySelectorAll('.jp-GhostText').length === 0", timeout=10_000)
        deadline = time.monotonic() + 20  # the browser reports every few seconds
        while time.monotonic() < deadline:
            total = status_json(page)["usage"]["acceptance"]["total"]
            if total["dismissed"]:
                break
            time.sleep(0.5)
        assert (total["shown"], total["accepted"], total["dismissed"]) == (2, 1, 1), total
        assert total["chars_accepted"] == len("survival_rate_by_class()")
        page.wait_for_function(
            "() => (document.querySelector('.jp-CodestralStatus')?.title ?? '').includes('Accepted today: 1 of 2')",
            timeout=20_000,
        )


def test_the_demo_notebook_never_shows_the_prompts_own_notes(tmp_path: Path, browser_page: Page) -> None:
    """The Binder demo, every cell run, then `top = orders.groupby(` in a new cell: the ghost text is code only
    (the prompt's notes of what each run made, its cell markers, are never shown)."""
    import nbformat

    demo = nbformat.read(Path(__file__).resolve().parent.parent / "binder" / "sales-analysis.ipynb", as_version=4)
    cells = [(cell.cell_type, cell.source) for cell in demo.cells]
    with start_lab(tmp_path, ["--CodestralExtension.backend=embedded"], {}, cells=cells,
                   notebook="sales-analysis.ipynb") as url:
        page = browser_page
        open_notebook(page, url)
        page.wait_for_function(
            "() => document.querySelector('.jp-CodestralStatus')?.dataset.state === 'ready'", timeout=120_000
        )
        page.locator(".jp-Notebook .jp-Cell").first.click()
        page.keyboard.press("Escape")
        for _ in cells:  # Shift+Enter through the notebook; the last opens a new cell
            page.keyboard.press("Shift+Enter")
            page.wait_for_timeout(300)
        page.wait_for_function(
            "n => document.querySelectorAll('.jp-Notebook .jp-Cell').length > n", arg=len(cells), timeout=60_000
        )
        page.wait_for_function(  # every run done: no cell waits with [*]
            "() => ![...document.querySelectorAll('.jp-InputPrompt')].some(p => p.textContent.includes('*'))",
            timeout=120_000,
        )
        page.locator(".jp-Notebook .jp-Cell").last.locator(".cm-content").click()
        page.keyboard.type("top = orders.groupby(", delay=80)
        states = ghost_texts_while_streaming(page, timeout=60)
        assert states, "no ghost text in the new cell"
        for state in states:
            assert "%%" not in state, states
            assert not any(line.lstrip().startswith("#") and ":" in line for line in state.split("\n")), states


# -- edits: Rewrite, Fix and Document as an inline diff ------------------------------------------------

BROKEN_CELL = "def mean(values):\n    return sum(values) / len(value)\n"
FIXED_CELL = "def mean(values):\n    return sum(values) / len(values)\n"
FIX_ANSWER = ["Here is the fix:\n```python\n", "def mean(values):\n", "    return sum(values) / len(values)\n", "```\n"]
SETTINGS_CELL = "a = 1\nb = 2\nc = 3\nd = 4\ne = 5\nf = 6\ng = 7"


def edits_notebook(path: Path) -> None:
    """A notebook whose second cell raised a NameError when it last ran."""
    error = {"output_type": "error", "ename": "NameError", "evalue": "name 'value' is not defined",
             "traceback": ["\x1b[0;31mNameError\x1b[0m: name 'value' is not defined"]}
    cells = [("import statistics", []), (BROKEN_CELL, [error]), ("print(mean([1, 2]))", []), (SETTINGS_CELL, [])]
    path.write_text(json.dumps({
        "cells": [{"cell_type": "code", "metadata": {}, "source": source, "outputs": outputs,
                   "execution_count": 1 if outputs else None} for source, outputs in cells],
        "metadata": PYTHON_NOTEBOOK, "nbformat": 4, "nbformat_minor": 5,
    }))


@contextmanager
def lab_for_edits(tmp_path: Path, fake: FakeFimServer, *flags: str, **kw: Any) -> Iterator[str]:
    with lab_with_backend(tmp_path, fake, *flags, cells=[("code", "")], **kw) as url:
        edits_notebook(tmp_path / "root" / "sales.ipynb")  # before the page opens it
        yield url


def right_click_cell(page: Page, index: int) -> None:
    page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".cm-content").click(button="right")
    page.wait_for_selector(".lm-Menu", timeout=10_000)


def menu_labels(page: Page) -> list[str]:
    """The labels of the menu's items shown (Lumino keeps hidden ones in the page, marked)."""
    items = page.locator(".lm-Menu .lm-Menu-item:not(.lm-mod-hidden) .lm-Menu-itemLabel")
    return [t.strip() for t in items.all_inner_texts()]


def wait_diff_shown(page: Page, index: int) -> None:
    """Until the cell shows a change: a line marked new, or old lines struck out."""
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    cell.locator(".cm-changedLine, .cm-deletedChunk:has(.cm-deletedLine)").first.wait_for(timeout=20_000)


def edit_status(page: Page) -> str:
    status = page.locator(".jp-CodestralEditStatus")
    return status.inner_text() if status.count() and status.is_visible() else ""


def test_fix_streams_in_as_an_inline_diff_tab_accepts_and_escape_rejects(
    tmp_path: Path, fake_backend_threaded: FakeFimServer, browser_page: Page
) -> None:
    fake, page = fake_backend_threaded, browser_page
    fake.script = Script(chunks=FIX_ANSWER, delay_between=0.6)
    with lab_for_edits(tmp_path, fake) as url:
        open_notebook(page, url)
        # Fix is offered on the cell that raised, not on one that did not.
        right_click_cell(page, 2)
        labels = menu_labels(page)
        assert "Rewrite with Codestral…" in labels and "Document with Codestral" in labels, labels
        assert "Fix with Codestral" not in labels, labels
        page.keyboard.press("Escape")
        right_click_cell(page, 1)
        page.locator(".lm-Menu .lm-Menu-item", has_text="Fix with Codestral").click()
        # It streams: the status item says so while the old line shows as deleted.
        page.wait_for_function(
            "() => (document.querySelector('.jp-CodestralEditStatus')?.textContent ?? '').includes('fixing')",
            timeout=20_000,
        )
        wait_diff_shown(page, 1)
        page.wait_for_function(
            "() => (document.querySelector('.jp-CodestralEditStatus')?.textContent ?? '').includes('Tab accept')",
            timeout=20_000,
        )
        cell = page.locator(".jp-Notebook .jp-Cell").nth(1)
        assert "len(value)" in cell.locator(".cm-deletedChunk").first.inner_text()
        assert cell.locator(".cm-changedLine").count() >= 1  # the new line, marked
        # What reached the backend: its chat API, with the cell's error.
        sent = fake.last
        assert sent.path == "/v1/chat/completions", sent.path
        assert "NameError" in json.dumps(sent.body["messages"])
        page.keyboard.press("Tab")
        page.wait_for_function("() => document.querySelectorAll('.cm-deletedChunk').length === 0", timeout=10_000)
        assert cell_source(page, 1) == FIXED_CELL
        assert edit_status(page) == ""
        # The accepted edit is one undo step, though it streamed in over seconds; redo brings it back.
        page.keyboard.press("Control+z")
        wait_cell_source(page, 1, BROKEN_CELL)
        page.keyboard.press("Control+Shift+z")
        wait_cell_source(page, 1, FIXED_CELL)
        # Escape brings the cell back (here from the keyboard shortcut, the cell's editor focused).
        fake.script = Script(chunks=["```python\n", "def mean(values):\n    return 0\n", "```\n"])
        cell.locator(".cm-content").click()
        page.keyboard.press("Alt+Shift+F")
        wait_diff_shown(page, 1)
        page.wait_for_function(
            "() => (document.querySelector('.jp-CodestralEditStatus')?.textContent ?? '').includes('Tab accept')",
            timeout=20_000,
        )
        page.keyboard.press("Escape")
        page.wait_for_function("() => document.querySelectorAll('.cm-deletedChunk').length === 0", timeout=10_000)
        assert cell_source(page, 1) == FIXED_CELL
        # A rejected edit leaves no undo step: the next undo is the accepted fix's.
        page.keyboard.press("Control+z")
        wait_cell_source(page, 1, BROKEN_CELL)
        page.keyboard.press("Control+Shift+z")
        wait_cell_source(page, 1, FIXED_CELL)
        # What became of them, counted per route: one accepted, one rejected.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            rows = [r for r in status_json(page)["usage"]["acceptance"]["rows"] if r["route"] == "fix"]
            if rows and rows[0].get("dismissed"):
                break
            time.sleep(0.5)
        assert rows and (rows[0]["shown"], rows[0]["accepted"], rows[0]["dismissed"]) == (2, 1, 1), rows
        page.screenshot(path=str(tmp_path / "fixed.png"))


def test_rewrite_asks_for_the_instruction_and_each_chunk_is_accepted_or_rejected_alone(
    tmp_path: Path, fake_backend_threaded: FakeFimServer, browser_page: Page
) -> None:
    fake, page = fake_backend_threaded, browser_page
    fake.script = Script(chunks=["```python\n", SETTINGS_CELL.replace("a = 1", "a = 10").replace("g = 7", "g = 70"),
                                 "\n```\n"])
    with lab_for_edits(tmp_path, fake) as url:
        open_notebook(page, url)
        page.locator(".jp-Notebook .jp-Cell").nth(3).locator(".cm-content").click()
        page.keyboard.press("Alt+Shift+R")
        dialog = page.locator(".jp-Dialog")
        dialog.locator("input").fill("multiply the first and the last by ten")
        dialog.locator("button", has_text="Rewrite").click()
        wait_diff_shown(page, 3)
        cell = page.locator(".jp-Notebook .jp-Cell").nth(3)
        page.wait_for_function(
            "() => (document.querySelector('.jp-CodestralEditStatus')?.textContent ?? '').includes('2 changes')",
            timeout=20_000,
        )
        assert "multiply the first and the last by ten" in json.dumps(fake.last.body["messages"])
        # The first chunk accepted with its own button, the second rejected with its own.
        cell.locator(".cm-deletedChunk").first.locator("button[name=accept]").click()
        page.wait_for_function(
            "() => (document.querySelector('.jp-CodestralEditStatus')?.textContent ?? '').includes('1 change ')",
            timeout=10_000,
        )
        cell.locator(".cm-deletedChunk").first.locator("button[name=reject]").click()
        page.wait_for_function("() => document.querySelectorAll('.cm-deletedChunk').length === 0", timeout=10_000)
        assert cell_source(page, 3) == SETTINGS_CELL.replace("a = 1", "a = 10")
        assert edit_status(page) == ""


def test_an_edit_is_stopped_from_the_status_item_and_a_failing_one_says_why(
    tmp_path: Path, fake_backend_threaded: FakeFimServer, browser_page: Page
) -> None:
    fake, page = fake_backend_threaded, browser_page
    fake.script = Script(chunks=["```python\n", "def mean(values):\n", "    '''The mean.'''\n"] + ["    pass\n"] * 20,
                         delay_between=1.0)
    with lab_for_edits(tmp_path, fake) as url:
        open_notebook(page, url)
        page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".cm-content").click()
        page.keyboard.press("Alt+Shift+R")
        page.locator(".jp-Dialog input").fill("add a docstring")
        page.locator(".jp-Dialog button", has_text="Rewrite").click()
        wait_diff_shown(page, 1)
        assert "rewriting" in edit_status(page)
        # While it is written, the old lines the new text has not reached stay as they were, below it.
        cell = page.locator(".jp-Notebook .jp-Cell").nth(1)
        assert "The mean." in cell.locator(".cm-changedLine").first.inner_text()
        assert "len(value)" in cell.locator(".cm-content").inner_text()
        page.locator(".jp-CodestralEditStatus").click()  # stop
        page.wait_for_function("() => document.querySelectorAll('.cm-deletedChunk').length === 0", timeout=10_000)
        assert cell_source(page, 1) == BROKEN_CELL and edit_status(page) == ""
        # The cell takes keys again once the edit is over.
        page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".cm-content").click()
        page.keyboard.press("Control+End")
        page.keyboard.type("# ok")
        assert cell_source(page, 1) == BROKEN_CELL + "# ok"
        # A refused key: the reason, in a notification; the cell as it was.
        fake.key = "some-other-key"
        page.keyboard.press("Alt+Shift+D")
        page.wait_for_selector(".Toastify__toast", timeout=20_000)
        toast = page.locator(".Toastify__toast").last.inner_text()
        assert "could not document" in toast and "key" in toast.lower(), toast
        assert cell_source(page, 1) == BROKEN_CELL + "# ok"


def test_fix_works_in_notebook_7(tmp_path: Path, fake_backend_threaded: FakeFimServer, browser_page: Page) -> None:
    fake, page = fake_backend_threaded, browser_page
    fake.script = Script(chunks=FIX_ANSWER)
    with lab_for_edits(tmp_path, fake, app="notebook", page="notebooks") as url:
        page.goto(url, timeout=90_000)
        page.wait_for_selector(".jp-Notebook .jp-CodeCell .cm-content", timeout=90_000)
        right_click_cell(page, 1)
        page.locator(".lm-Menu .lm-Menu-item", has_text="Fix with Codestral").click()
        wait_diff_shown(page, 1)
        page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".cm-changedLine", has_text="len(values)").wait_for()
        # Notebook 7 has no status bar: the edit's status item is in the edited cell, and says what to do.
        in_cell = page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".jp-CodestralEditStatus.jp-mod-inCell")
        in_cell.filter(has_text="Tab accept").wait_for(timeout=10_000)
        page.keyboard.press("Enter")
        page.wait_for_function("() => document.querySelectorAll('.cm-deletedChunk').length === 0", timeout=10_000)
        assert cell_source(page, 1) == FIXED_CELL
        assert page.locator(".jp-CodestralEditStatus").count() == 0  # gone with the edit
