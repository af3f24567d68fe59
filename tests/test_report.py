"""Report rendering: executed notebooks to HTML without code cells, through nbconvert's API."""

import nbformat

from cosmic.report import render_html


def test_render_html_hides_code_and_keeps_outputs(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("secret_source_line = 1\nprint('visible output')")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="visible output\n")]
    nb.cells = [nbformat.v4.new_markdown_cell("# A title"), cell]
    path = tmp_path / "a b $(touch pwned).ipynb"  # a path no shell may see
    nbformat.write(nb, str(path))
    out = tmp_path / "out dir" / "report.html"
    out.parent.mkdir()
    render_html(path, out)
    html = out.read_text()
    assert "visible output" in html and "A title" in html
    assert "secret_source_line" not in html
    assert not (tmp_path / "pwned").exists()
