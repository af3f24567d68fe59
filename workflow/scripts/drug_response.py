"""Rule `drug_response`: treated vs control and resistant vs responsive cells in both modalities."""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)
import sys
from pathlib import Path

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

from cosmic.drug_response import run_drug_response

summary = run_drug_response(
    snakemake.input.cohort,
    snakemake.input.variance,
    Path(snakemake.output.summary).parent,
    params=snakemake.params.drug_response,
    truth_dir=snakemake.params.truth or None,
)
for name, comparison in summary["comparisons"].items():
    print(f"{name}: {comparison.get('skipped') or comparison.get('classifiers')}", file=sys.stderr)
