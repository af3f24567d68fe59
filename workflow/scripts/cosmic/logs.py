"""One logging set-up for every rule script: stderr, ``logging`` and warnings go to the rule's log.

Rule scripts call :func:`log_to_file` first thing, so ``log.info`` lines and ``warnings.warn``
messages from the package land in the file named by the rule's ``log:`` directive.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_to_file(path: str | Path, level: int = logging.INFO):
    """Send ``sys.stderr``, the root logger and Python warnings to ``path`` (line-buffered)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "w", buffering=1)
    sys.stderr = stream
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    return stream
