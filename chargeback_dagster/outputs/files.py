"""Atomic output files (docs/outputs.md §1): written to a temporary file beside the target, then renamed, with
the mode an ordinary write gives; temporary files of writes that died are swept from the folder."""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".chargeback-tmp"
STALE_TEMP_SECONDS = 3600


def remove_stale_temp_files(directory: Path) -> None:
    """Remove the temporary files of writes that died: ours (TEMP_SUFFIX), unchanged for STALE_TEMP_SECONDS.

    Best effort: a file that cannot be removed is logged and left; it never fails a write."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if not (entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX)):
                    continue
                try:
                    if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                except FileNotFoundError:
                    pass  # renamed by its writer or removed by another sweep meanwhile
                except OSError as exc:
                    log.warning("Cannot remove stale temporary file '%s': %s", entry.path, exc)
    except OSError as exc:  # a directory we may write but not list
        log.warning("Cannot look for stale temporary files in '%s': %s", directory, exc)


def write_atomically(path: Path, write: Callable[[TextIO], None], swept_dirs: set[Path]) -> None:
    """Create `path` through `write(file)`: a temporary file in the same folder, renamed over `path` once
    complete. `swept_dirs`: folders already cleared of stale temporary files in this batch. Raises OSError."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.parent not in swept_dirs:
        remove_stale_temp_files(path.parent)
        swept_dirs.add(path.parent)
    # Created like any new file (mode 0666 less the umask), not 0600 as tempfile.mkstemp would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="", buffering=1 << 20) as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
