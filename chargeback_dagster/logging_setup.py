"""Logging per docs/operations.md §11: config-driven levels and context fields on operational lines."""

from __future__ import annotations

import logging
from datetime import date

ROOT = "chargeback_dagster"


def apply_logging(config) -> None:
    """Apply `logging.level`, `logging.format` and `per_module_levels` to the chargeback_dagster loggers.

    Dagster's `python_logs.managed_python_loggers: [chargeback_dagster]` forwards these lines to the run's
    event log; the handler added here only serves processes outside a run (CLI, code-location load).
    """
    root = logging.getLogger(ROOT)
    root.setLevel(config.level)
    if not any(getattr(h, "_chargeback", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler._chargeback = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    for handler in root.handlers:
        if getattr(handler, "_chargeback", False):
            handler.setFormatter(logging.Formatter(config.format))
    for name, level in config.per_module_levels.items():
        logging.getLogger(name).setLevel(level.upper())


class ContextAdapter(logging.LoggerAdapter):
    """Prefixes each line with `tenant=<t> run_id=<id> date=<d> stage=<stage>` (the fields that are known)."""

    def process(self, msg, kwargs):
        fields = " ".join(f"{k}={v}" for k, v in self.extra.items() if v)
        return (f"{fields} | {msg}" if fields else msg), kwargs


def step_logger(tenant: str, run_id: str | None, stage: str, dates: list[date]) -> ContextAdapter:
    span = ""
    if dates:
        span = str(dates[0]) if len(dates) == 1 else f"{dates[0]}..{dates[-1]}"
    return ContextAdapter(
        logging.getLogger(f"{ROOT}.pipeline"),
        {"tenant": tenant, "run_id": run_id, "date": span, "stage": stage},
    )
