"""A real, throw-away Prometheus server loaded with OpenMetrics history (tests, benchmarks, demos).

Usage::

    with LocalPrometheus(writer.text(), Path(tmp)) as prom:
        client = PrometheusClient(prom.url)
        ...
        prom.stop()   # simulate an outage (same port, same data)
        prom.start()  # back again

``LocalPrometheus(None, workdir)`` starts an empty server.

Large histories (benchmarks): ``LocalPrometheus(None, workdir, openmetrics_files=[...], import_workers=2)``
imports each file with its own promtool call (files may be written streaming, so the text never sits in
memory; promtool re-parses a whole input once per 2-hour block it writes, so files of one aligned 2-hour
block each import fastest; pass them in time order: start-up waits for the newest sample of the last file).
``keep_data=True`` starts on an existing ``<workdir>/data`` as it is (no import),
e.g. a copy of a data directory cached from an earlier import.

How history is loaded: the text is written to ``<workdir>/history.om`` and turned into TSDB blocks with
``promtool tsdb create-blocks-from openmetrics <file> <workdir>/data``; Prometheus then opens
``<workdir>/data`` as its TSDB. The workdir is owned by this object: its ``data`` directory is recreated on
the first start.

Data far in the past (e.g. 2026-02-01 while today is 2026-11-27) — what Prometheus 2.42 does:

* Backfilled blocks are *not* subject to the head's out-of-order / "too old" limits (those only apply to
  samples appended to the head), so any age can be imported and queried.
* **Time retention is relative to the newest block, not to the wall clock**: on the first reload a block is
  deleted when ``newest block max time − block max time > retention``. With the default 15 d, history that
  spans more than 15 days (e.g. February plus "yesterday") silently loses its old blocks at start-up
  (measured: ``msg="Deleting obsolete block"`` and empty query results). We therefore always pass
  ``--storage.tsdb.retention.time=100y``.
* promtool 2.42 has **no** ``--max-block-duration`` flag for ``create-blocks-from openmetrics`` (added in
  later releases); it always writes 2 h blocks, and only for 2 h ranges that contain samples, so sparse
  history spread over many months stays cheap (≈ 1 s for 300 days with a few days of data). Prometheus
  compacts adjacent blocks in the background later; queries are unaffected. When a newer promtool that
  supports the flag is found, ``--max-block-duration=24h`` is passed (blocks aligned to UTC days, none
  reaching far past the data into the head's time range).
* Prometheus opens all blocks before ``/-/ready`` answers 200; we additionally wait until an instant
  query at the newest sample's timestamp returns data.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import shutil
import socket
import subprocess
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import httpx

PROMETHEUS_BIN = os.environ.get("CHARGEBACK_PROMETHEUS_BIN", "prometheus")
PROMTOOL_BIN = os.environ.get("CHARGEBACK_PROMTOOL_BIN", "promtool")
RETENTION = "100y"
MINIMAL_CONFIG = "global:\n  scrape_interval: 1m\n  evaluation_interval: 1m\nscrape_configs: []\n"

_LIVE: weakref.WeakSet[LocalPrometheus] = weakref.WeakSet()


class LocalPrometheusError(RuntimeError):
    """promtool or prometheus failed; the message carries their output."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@cache
def _promtool_has_max_block_duration() -> bool:
    try:
        out = subprocess.run(
            [PROMTOOL_BIN, "tsdb", "create-blocks-from", "openmetrics", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "max-block-duration" in (out.stdout + out.stderr)


def _newest_sample(text: str) -> tuple[str, float] | None:
    """(series text, timestamp) of the newest sample in OpenMetrics text, or None when there is none."""
    best: tuple[str, float] | None = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        # series [labels] value timestamp — labels may contain spaces, so split from the right
        parts = line.rsplit(" ", 2)
        if len(parts) != 3:
            continue
        try:
            ts = float(parts[2])
        except ValueError:
            continue
        if math.isfinite(ts) and (best is None or ts > best[1]):
            best = (parts[0], ts)
    return best


def _newest_sample_in_files(paths: Sequence[Path]) -> tuple[str, float] | None:
    """Like _newest_sample over the concatenation of the files, read line by line."""
    best: tuple[str, float] | None = None
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                found = _newest_sample(line)
                if found is not None and (best is None or found[1] > best[1]):
                    best = found
    return best


class LocalPrometheus:
    def __init__(
        self,
        openmetrics_text: str | None,
        workdir: Path,
        port: int | None = None,
        *,
        startup_timeout: float = 60.0,
        openmetrics_files: Sequence[Path] | None = None,
        import_workers: int = 1,
        keep_data: bool = False,
        extra_flags: Sequence[str] = (),
        config_text: str = MINIMAL_CONFIG,
    ) -> None:
        self.openmetrics_text = openmetrics_text
        self.openmetrics_files = [Path(f) for f in openmetrics_files or ()]
        self.import_workers = max(1, import_workers)
        self.workdir = Path(workdir)
        self.extra_flags = list(extra_flags)  # e.g. --web.enable-remote-write-receiver
        self.config_text = config_text  # prometheus.yml, e.g. with storage.tsdb.out_of_order_time_window
        self.port = port
        self._fixed_port = port is not None
        self.startup_timeout = startup_timeout
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "prometheus.yml"
        self.log_path = self.workdir / "prometheus.log"
        self._imported = keep_data and self.data_dir.is_dir()
        self._proc: subprocess.Popen[bytes] | None = None
        self._probe = _newest_sample(openmetrics_text) if openmetrics_text else None
        if self._probe is None and self.openmetrics_files and not self._imported:
            self._probe = _newest_sample_in_files(self.openmetrics_files[-1:])

    # -- public

    @property
    def url(self) -> str:
        if self.port is None:
            raise LocalPrometheusError("LocalPrometheus has not been started yet")
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> LocalPrometheus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalPrometheus:
        """Import the history (first call only), start Prometheus and wait until it serves the data."""
        if self.running:
            return self
        if not self._imported:
            self._import()
        attempts = 1 if self._fixed_port or self.port is not None else 3
        for attempt in range(attempts):
            if self.port is None:
                self.port = _free_port()
            try:
                self._spawn_and_wait()
                return self
            except LocalPrometheusError:
                self.stop()
                if attempt + 1 == attempts:
                    raise
                self.port = None  # port probably taken between choosing and binding: try another
        return self  # pragma: no cover

    def stop(self) -> None:
        """Terminate Prometheus (SIGTERM, then SIGKILL after 15 s). Data and port are kept for start()."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _LIVE.discard(self)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)

    # -- internals

    def _import(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True)
        self.config_path.write_text(self.config_text)
        if self.openmetrics_text and self._probe is not None:
            source = self.workdir / "history.om"
            text = self.openmetrics_text
            if not text.endswith("\n"):
                text += "\n"
            source.write_text(text)
            cmd = [PROMTOOL_BIN, "tsdb", "create-blocks-from", "openmetrics"]
            if _promtool_has_max_block_duration():
                cmd.append("--max-block-duration=24h")
            cmd += ["--quiet", str(source), str(self.data_dir)]
            try:
                result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            except OSError as exc:
                raise LocalPrometheusError(f"cannot run {PROMTOOL_BIN}: {exc}") from exc
            if result.returncode != 0:
                raise LocalPrometheusError(
                    f"promtool tsdb create-blocks-from openmetrics failed (exit {result.returncode}) "
                    f"for {source}:\n{(result.stderr or result.stdout).strip()}"
                )
        if self.openmetrics_files:
            with ThreadPoolExecutor(max_workers=self.import_workers) as pool:
                list(pool.map(self._promtool_import, self.openmetrics_files))
        self._imported = True

    def _promtool_import(self, source: Path) -> None:
        cmd = [PROMTOOL_BIN, "tsdb", "create-blocks-from", "openmetrics"]
        if _promtool_has_max_block_duration():
            cmd.append("--max-block-duration=24h")
        cmd += ["--quiet", str(source), str(self.data_dir)]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except OSError as exc:
            raise LocalPrometheusError(f"cannot run {PROMTOOL_BIN}: {exc}") from exc
        if result.returncode != 0:
            raise LocalPrometheusError(
                f"promtool tsdb create-blocks-from openmetrics failed (exit {result.returncode}) "
                f"for {source}:\n{(result.stderr or result.stdout).strip()}"
            )

    def _spawn_and_wait(self) -> None:
        if not self.config_path.exists():
            self.config_path.write_text(self.config_text)
        cmd = [
            PROMETHEUS_BIN,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--storage.tsdb.retention.time={RETENTION}",
            "--log.level=info",
            *self.extra_flags,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        try:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise LocalPrometheusError(f"cannot run {PROMETHEUS_BIN}: {exc}") from exc
        finally:
            log.close()
        _LIVE.add(self)
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=2.0) as http:
            self._wait(http, deadline, self._ready)
            if self._probe is not None:
                self._wait(http, deadline, self._sees_data)

    def _wait(self, http: httpx.Client, deadline: float, condition) -> None:
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise LocalPrometheusError(f"prometheus exited with {code}:\n{self._log_tail()}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if condition(http):
                    return
            if time.monotonic() > deadline:
                raise LocalPrometheusError(
                    f"prometheus on {self.url} not ready after {self.startup_timeout:.0f} s:\n"
                    + self._log_tail()
                )
            time.sleep(0.05)

    def _ready(self, http: httpx.Client) -> bool:
        return http.get(f"{self.url}/-/ready").status_code == 200

    def _sees_data(self, http: httpx.Client) -> bool:
        assert self._probe is not None
        series, ts = self._probe
        r = http.post(f"{self.url}/api/v1/query", data={"query": f"count({series})", "time": repr(ts)})
        body = r.json()
        return body.get("status") == "success" and bool(body["data"]["result"])

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@atexit.register
def _stop_all() -> None:  # a crashed demo script must not leave servers behind
    for prom in list(_LIVE):
        with contextlib.suppress(Exception):
            prom.stop()
