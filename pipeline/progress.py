"""A one-line progress bar on stderr for long work, drawn only when stderr is a terminal."""

from __future__ import annotations

import sys


class ProgressBar:
    """Call as ``bar(done, total)``; silent for a log file, a pipe, or fewer than ``min_total`` items."""

    def __init__(self, label: str, min_total: int = 500) -> None:
        self.label, self.min_total = label, min_total
        self.enabled = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total < self.min_total:
            return
        width = 30
        filled = int(width * done / max(total, 1))
        end = "\n" if done >= total else ""
        print(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end=end,
              file=sys.stderr, flush=True)
