"""Rule `report_html`: render an executed report notebook to HTML with nbconvert (code cells hidden).

A script rather than a `jupyter` shell command: it runs with the workflow's own interpreter (no
dependency on PATH) and no path is ever passed through a shell.
"""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

from cosmic.report import render_html

render_html(snakemake.input[0], snakemake.output[0])
