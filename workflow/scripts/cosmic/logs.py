"""One logging set-up for every rule script: stderr, ``logging`` and warnings go to the rule's log.

Rule scripts call :func:`log_to_file` first thing, so ``log.info`` lines and ``warnings.warn``
messages from the package land in the file named by the rule's ``log:`` directive. Data problems
(:class:`cosmic.errors.CosmicDataWarning`, e.g. pairing rows that point at no image, barcodes
dropped) and ``cosmic`` loggers' warnings are *also* written to the job's own stderr, which Snakemake
shows in the run's output (on SLURM: the job's SLURM log), so they are not buried in a log file.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

from .errors import CosmicDataWarning

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _PackageWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == "cosmic" or record.name.startswith("cosmic.")


def log_to_file(path: str | Path, level: int = logging.INFO):
    """Send ``sys.stderr``, the root logger and Python warnings to ``path`` (line-buffered); echo data
    problems to the job's stderr as well."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "w", buffering=1)
    job_stderr = sys.__stderr__
    sys.stderr = stream
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    if job_stderr is not None:
        echo = logging.StreamHandler(job_stderr)
        echo.setLevel(logging.WARNING)
        echo.addFilter(_PackageWarnings())
        echo.setFormatter(logging.Formatter(f"%(levelname)s (log: {path}): %(message)s"))
        root.addHandler(echo)
    root.setLevel(level)
    warnings_logger = logging.getLogger("py.warnings")

    def show(message, category, filename, lineno, file=None, line=None):
        warnings_logger.warning(warnings.formatwarning(message, category, filename, lineno, line).rstrip())
        if job_stderr is not None and issubclass(category, CosmicDataWarning):
            print(f"WARNING (log: {path}): {message}", file=job_stderr, flush=True)

    warnings.showwarning = show
    return stream
