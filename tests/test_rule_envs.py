"""Each rule's script imports only what its conda environment provides (conda itself is not needed).

For every rule the test reads its `conda:` env file and its `script:`, then imports, in a fresh
interpreter, every module the script imports while blocking third-party packages that the env does
not list (imports made *by* allowed packages are not blocked; imports made by the project's code
are). A module-level import of, say, anndata in code that the imaging env runs fails here instead
of in the first cluster job.
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "workflow" / "rules"
SCRIPTS = REPO / "workflow" / "scripts"
# conda package name -> import name(s), where they differ
IMPORT_NAMES = {"python-igraph": ["igraph"], "pytorch": ["torch"], "scikit-learn": ["sklearn"],
                "scikit-image": ["skimage"], "matplotlib-base": ["matplotlib", "mpl_toolkits"],
                "pyyaml": ["yaml"], "pot": ["ot"], "ipykernel": ["ipykernel", "IPython"],
                "nbconvert": ["nbconvert", "nbformat"]}
ALWAYS = {"cosmic", "_checkout", "snakemake"}  # the project; Snakemake puts itself on the script's path

BLOCKER = r'''
import importlib.abc, sys
ALLOWED = set(sys.argv[1].split(","))
PROJECT = sys.argv[2]
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in ALLOWED or top in sys.stdlib_module_names or name in sys.modules:
            return None
        frame = sys._getframe(1)
        while frame is not None and (frame.f_code.co_filename.startswith("<frozen") or "importlib" in frame.f_code.co_filename):
            frame = frame.f_back
        if frame is not None and frame.f_code.co_filename.startswith(PROJECT):
            raise ImportError(f"{name} is not in this rule's conda environment (imported by {frame.f_code.co_filename})")
        return None
sys.meta_path.insert(0, Blocker())
sys.path.insert(0, PROJECT)
import importlib
for module in sys.argv[3:]:
    importlib.import_module(module)
'''


def _rules():
    for path in sorted(RULES.glob("*.smk")):
        text = path.read_text()
        for match in re.finditer(r"^\s*rule (\w+):(.*?)(?=^\s*rule \w+:|\Z)", text, re.S | re.M):
            env = re.search(r'conda:\s*\n\s*"([^"]+)"', match.group(2))
            script = re.search(r'script:\s*\n\s*"([^"]+)"', match.group(2))
            if env and script:
                yield match.group(1), (path.parent / env.group(1)).resolve(), (path.parent / script.group(1)).resolve()


def _allowed(env_file: Path) -> set[str]:
    allowed = set(ALWAYS)
    for dep in yaml.safe_load(env_file.read_text())["dependencies"]:
        if not isinstance(dep, str):
            continue
        name = re.split(r"[=<> ]", dep.strip())[0]
        allowed.update(IMPORT_NAMES.get(name, [name.replace("-", "_")]))
    return allowed


def _imports(script: Path) -> list[str]:
    modules = []
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Import):
            modules += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.append(node.module)
    return modules


RULE_SCRIPTS = sorted(_rules())


def test_every_script_rule_is_checked():
    assert len(RULE_SCRIPTS) >= 18


@pytest.mark.parametrize("rule, env_file, script", RULE_SCRIPTS, ids=[r[0] for r in RULE_SCRIPTS])
def test_rule_script_imports_only_its_environment(rule, env_file, script):
    result = subprocess.run([sys.executable, "-c", BLOCKER, ",".join(sorted(_allowed(env_file))), str(SCRIPTS),
                             *_imports(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"rule {rule} ({env_file.name}): {result.stderr[-1500:]}"
