"""Report helpers: executed notebooks rendered to HTML, and the index page linking them."""

from __future__ import annotations

import html
import os
from pathlib import Path

from .atomic import atomic_path

REPORT_TITLES = {
    "qc": ("Quality control", "images and segmentation, nuclear features, RNA QC, pairing"),
    "foundation": ("Nuclei foundation model", "training curve, reconstructions, embedding UMAP, linear probes"),
    "cosmic": ("COSMIC: cross-modal generation", "variance decomposition both ways, per-gene R², generated "
               "nuclei, matching, calibration, reference-parity metrics"),
    "cell_cycle": ("Cell cycle", "RNA phase and continuous position, DNA content and area, RNA vs morphology "
                   "agreement, nuclei along the cycle"),
    "drug_response": ("Drug response", "treated vs control and resistant vs responsive: differential expression, "
                      "morphology tests, classifiers, morphology-associated genes"),
}


def write_index(pages: list[str], names: list[str], path) -> None:
    """Write ``index.html`` with one link per rendered report page."""
    path = Path(path)
    items = []
    for page, name in zip(pages, names):
        title, blurb = REPORT_TITLES.get(name, (name, ""))
        href = os.path.relpath(page, path.parent)
        items.append(f'<li><a href="{html.escape(href)}">{html.escape(title)}</a>: {html.escape(blurb)}</li>')
    body = "\n".join(items)
    text = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>COSMIC reports</title></head>\n"
        "<body><h1>COSMIC reports</h1>\n<ul>\n" + body + "\n</ul></body></html>\n"
    )
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def render_html(notebook, html_path) -> None:
    """An executed notebook as a standalone HTML page without its code cells (nbconvert), atomically."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter()
    exporter.exclude_input = True
    body, _ = exporter.from_notebook_node(nbformat.read(str(notebook), as_version=4))
    with atomic_path(html_path) as tmp:
        Path(tmp).write_text(body, encoding="utf-8")
