"""COSMIC: link single-nucleus morphology and gene expression in paired single cells.

The package holds all logic of the Snakemake workflow; rule scripts in
``workflow/scripts/`` only parse ``snakemake.input/output/params`` and call it.
"""

__version__ = "0.1.0"
