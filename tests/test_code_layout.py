"""The package stays readable: one concern per module, short functions, thin rule scripts."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "workflow" / "scripts" / "cosmic"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
MAX_SCRIPT_LINES = 80


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_no_package_module_is_longer_than_the_limit():
    long = {str(p.relative_to(PACKAGE)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these modules (> {MAX_MODULE_LINES} lines): {long}"


def test_no_function_is_longer_than_the_limit():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"split these functions (> {MAX_FUNCTION_LINES} lines): {long}"


def test_rule_scripts_are_thin_and_log_through_the_helper():
    for script in sorted((REPO / "workflow" / "scripts").glob("[!_]*.py")):
        text = script.read_text()
        assert len(text.splitlines()) <= MAX_SCRIPT_LINES, f"{script.name}: move logic into the package"
        assert "log_to_file(snakemake.log[0])" in text, f"{script.name} does not log through cosmic.logs"
        # Everything a rule reads comes through input:/params:, so Snakemake reruns it on a change.
        assert "snakemake.config" not in text, f"{script.name} reads the config directly; use params:"
        assert "def " not in text, f"{script.name} defines functions"


def test_the_package_does_not_import_the_test_suite_or_snakemake():
    for path in _modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(("snakemake", "tests", "conftest")), f"{path.name} imports {name}"
