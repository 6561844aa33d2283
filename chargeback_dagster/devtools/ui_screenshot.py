"""`chargeback-dagster ui-screenshot`: one partition of `<tenant>/chargeback` in the Dagster UI — the date's
money metadata (docs/outputs.md §5) — rendered by headless Chromium, saved as a PNG and as the rendered DOM.

It opens the asset's Partitions tab on that date (`/assets/<key path>?view=partitions&partition=<date>`),
whose right pane shows the partition's latest materialization with its metadata, and waits until the money
entries are on the page. The browser is Debian's Chromium driven by selenium through Debian's chromedriver
(`scripts/install-system-deps.sh --with-browser`); nothing is downloaded. With `--demo` it first starts
`chargeback-dagster demo --ui` on a free port and captures the demo's last day, then stops the demo.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, urlencode

# what the page shows once the materialization's metadata has rendered (money_metadata.py's entry names)
RENDERED_MARKERS = ("billed_total_exact", "top_teams", "top_identities")
WINDOW = (1440, 2000)  # tall enough for the whole metadata pane of a demo date
INSTALL_HINT = "install Debian's chromium and chromium-driver: scripts/install-system-deps.sh --with-browser"


class BrowserMissing(RuntimeError):
    pass


def partition_url(base_url: str, asset: str, partition: str) -> str:
    """The UI page of one partition of an asset: `asset` is the key path joined with `/`."""
    path = "/".join(quote(part, safe="") for part in asset.split("/"))
    return f"{base_url.rstrip('/')}/assets/{path}?{urlencode({'view': 'partitions', 'partition': partition})}"


def browser_paths() -> tuple[str, str]:
    """Chromium and chromedriver: $CHROMIUM / $CHROMEDRIVER, else the ones on PATH (Debian's)."""
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if not chromium or not driver:
        raise BrowserMissing(f"chromium or chromedriver not found; {INSTALL_HINT}")
    return chromium, driver


def render(url: str, png: Path, *, timeout: float = 90, markers: tuple[str, ...] = RENDERED_MARKERS) -> str:
    """Load `url` in headless Chromium, wait until every marker is in the page's text, save a PNG of the
    window and return the rendered DOM (after the UI's JavaScript filled it in)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    chromium, driver_path = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)  # --no-sandbox: Chromium refuses to start as root without it
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    # an explicit driver path: selenium never tries to download one
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        # Dagster's "Join the Dagster community" dialog (shown on localhost until dismissed) would cover the
        # page, and may pop up after the metadata: mark it dismissed in this browser before the UI loads
        driver.execute_cdp_cmd(
            "Page.addScriptToEvaluateOnNewDocument",
            {"source": "localStorage.setItem('communityNux', '1')"},
        )
        driver.get(url)
        deadline = time.monotonic() + timeout
        ready_since = None  # the page is captured once it has looked finished for a second
        while ready_since is None or time.monotonic() - ready_since < 1:
            text = driver.execute_script("return document.body.innerText")
            dialogs = driver.find_elements(By.XPATH, "//*[@role='dialog']")
            if all(m in text for m in markers) and not dialogs:
                ready_since = ready_since or time.monotonic()
            else:
                ready_since = None
                if time.monotonic() > deadline:
                    missing = [m for m in markers if m not in text]
                    raise TimeoutError(
                        f"{url}: after {timeout:.0f}s the page still lacks {missing}"
                        + (" (a dialog covers it)" if dialogs else "")
                    )
            time.sleep(0.25)
        png.parent.mkdir(parents=True, exist_ok=True)
        if not driver.save_screenshot(str(png)):
            raise RuntimeError(f"Chromium could not save {png}")
        return driver.execute_script("return document.documentElement.outerHTML")
    finally:
        driver.quit()


class _Rows(HTMLParser):
    """Every table row of a page as its cells' text; a row inside another row's cell (a metadata table
    value) is tagged with the first cell of that outer row (the metadata entry's label)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str | None, list[str]]] = []
        self._open: list[list[str]] = []  # rows being read, outermost first
        self._in_cell: list[bool] = []

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "tr":
            self._open.append([])
            self._in_cell.append(False)
        elif tag in ("td", "th") and self._open:
            self._open[-1].append("")
            self._in_cell[-1] = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._open:
            cells = [c.strip() for c in self._open.pop()]
            self._in_cell.pop()
            outer = self._open[-1][0].strip() if self._open and self._open[-1] else None
            self.rows.append((outer, cells))
        elif tag in ("td", "th") and self._open:
            self._in_cell[-1] = False

    def handle_data(self, data: str) -> None:
        if self._open and self._in_cell[-1]:
            self._open[-1][-1] += data


def table_rows(html: str) -> list[tuple[str | None, list[str]]]:
    """(label of the enclosing metadata entry or None, [cell texts]) for every <tr> of the rendered DOM."""
    parser = _Rows()
    parser.feed(html)
    return parser.rows


def metadata_values(html: str) -> dict[str, str]:
    """The metadata entries shown as `label | value` rows (e.g. billed_total_exact → 181.5908)."""
    return {cells[0]: cells[1] for outer, cells in table_rows(html) if outer is None and len(cells) >= 2}


def metadata_table(html: str, label: str) -> list[list[str]]:
    """The data rows of the table that metadata entry `label` (top_teams, top_identities) shows."""
    return [
        cells for outer, cells in table_rows(html) if outer == label and cells != ["name", "amount", "share"]
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def demo_ui(workdir: Path, days: int) -> Iterator[str]:
    """`chargeback-dagster demo --ui` in a child process until the block ends; yields the UI's URL."""
    port = _free_port()
    args = ["demo", "--ui", "--workdir", str(workdir), "--days", str(days), "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "chargeback_dagster.cli", *args],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Ctrl-C must reach the demo even when this command was started with SIGINT ignored (`cmd &` in a
        # script): an ignored signal stays ignored across exec, a default one lets Python raise
        # KeyboardInterrupt, on which the demo stops dagster dev, Prometheus and the simulator
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        seen: list[str] = []
        # the demo prints `Dagster UI: <url>` once the code location has loaded, or exits (its own waits
        # are bounded)
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("Dagster UI: "):
                break
        else:
            raise RuntimeError(f"the demo exited with {proc.wait()}:\n{''.join(seen[-30:])}")
        yield line.split()[2]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()


def capture(url: str, asset: str, partition: str, out: Path, dom: Path | None, timeout: float) -> int:
    page = partition_url(url, asset, partition)
    html = render(page, out, timeout=timeout)
    if dom is not None:
        dom.parent.mkdir(parents=True, exist_ok=True)
        dom.write_text(html)
    values = metadata_values(html)
    print(f"{page}\n  saved {out}" + (f" and the rendered DOM {dom}" if dom else ""))
    print(
        f"  billed_total_exact {values.get('billed_total_exact')}, allocated_total_exact "
        f"{values.get('allocated_total_exact')}"
    )
    for label in ("top_teams", "top_identities"):
        rows = metadata_table(html, label)
        print(f"  {label}: " + ", ".join(f"{name} {amount}" for name, amount, *_ in rows[:3]))
    return 0


def main(args: argparse.Namespace) -> int:
    out, dom = Path(args.out), Path(args.dom) if args.dom else None
    try:
        browser_paths()  # before a two-minute demo: fail at once when there is no browser
        if not args.demo:
            if not args.partition:
                print("ui-screenshot: --partition is required with --url")
                return 2
            return capture(args.url, args.asset, args.partition, out, dom, args.timeout)
        # the demo's last day is yesterday (UTC)
        partition = args.partition or (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
        with contextlib.ExitStack() as stack:
            if args.workdir:
                workdir = Path(args.workdir)
            else:
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chargeback-ui-")))
            print(f"Starting the demo ({args.days} days, work folder {workdir}) ...", flush=True)
            url = stack.enter_context(demo_ui(workdir, args.days))
            return capture(url, args.asset, partition, out, dom, args.timeout)
    except (BrowserMissing, RuntimeError, TimeoutError) as exc:
        print(f"ui-screenshot: {exc}")
        return 1
