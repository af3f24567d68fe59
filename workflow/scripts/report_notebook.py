"""Rule `report_notebook`: execute a parametrised notebook with papermill."""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)
import os
import sys
from pathlib import Path

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

import papermill

from cosmic.atomic import atomic_path

# The notebook's kernel imports the cosmic package from next to this script.
scripts_dir = str(Path(__file__).resolve().parent)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (scripts_dir, os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")

with atomic_path(snakemake.output[0]) as tmp:
    papermill.execute_notebook(
        snakemake.input.notebook,
        str(tmp),
        parameters=dict(snakemake.params.parameters),
        kernel_name="python3",
        progress_bar=False,
        log_output=True,
    )
