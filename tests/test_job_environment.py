"""What a rule's job runs with: this checkout's package, and data problems visible in the run's output."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap

from conftest import REPO

SCRIPTS = REPO / "workflow" / "scripts"


def test_every_rule_script_imports_the_checkout_package_first():
    for script in sorted(SCRIPTS.glob("[!_]*.py")):
        imports = [node for node in ast.parse(script.read_text()).body if isinstance(node, (ast.Import, ast.ImportFrom))]
        first = imports[0]
        assert isinstance(first, ast.Import) and first.names[0].name == "_checkout", \
            f"{script.name}: import _checkout before anything else (see workflow/scripts/_checkout.py)"


def test_a_job_imports_this_checkout_even_when_another_copy_is_installed(tmp_path):
    """Snakemake appends the script folder to sys.path, after site-packages: an installed `cosmic`
    would win without the _checkout module."""
    installed = tmp_path / "site" / "cosmic"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("WHO = 'installed copy'\n")
    (installed / "logs.py").write_text("raise ImportError('the installed copy was imported')\n")
    job = textwrap.dedent(f"""
        import sys
        import cosmic  # e.g. imported earlier by a library: the installed copy
        assert cosmic.WHO == 'installed copy'
        sys.path.append({str(SCRIPTS)!r})  # what Snakemake's script preamble does
        import _checkout
        from cosmic.logs import log_to_file
        import cosmic
        print(cosmic.__file__)
    """)
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", job], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(SCRIPTS / "cosmic" / "__init__.py")


def test_a_job_imports_this_checkout_when_another_checkout_is_installed_editable(tmp_path):
    """An editable install of another checkout puts that checkout's script folder, with its own
    `_checkout` and `cosmic`, on sys.path ahead of this one: the job still gets this checkout."""
    other = tmp_path / "other_checkout" / "workflow" / "scripts"
    (other / "cosmic").mkdir(parents=True)
    (other / "_checkout.py").write_text((SCRIPTS / "_checkout.py").read_text())
    (other / "cosmic" / "__init__.py").write_text("WHO = 'other checkout'\n")
    (other / "cosmic" / "logs.py").write_text("raise ImportError('the other checkout was imported')\n")
    job = textwrap.dedent(f"""
        import sys
        snakemake = object()  # what Snakemake's preamble defines, with the script's real __file__
        __file__ = {str(SCRIPTS / "cosmic_model.py")!r}
        sys.path.append({str(SCRIPTS)!r})
        import _checkout
        assert _checkout.__file__.startswith({str(other)!r})  # the other checkout's copy ran
        from cosmic.logs import log_to_file
        import cosmic
        print(cosmic.__file__)
    """)
    env = {"PYTHONPATH": str(other), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", job], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(SCRIPTS / "cosmic" / "__init__.py")


def test_data_warnings_reach_the_log_and_the_jobs_stderr(tmp_path):
    log = tmp_path / "logs" / "rule.log"
    job = textwrap.dedent(f"""
        import logging, sys, warnings
        sys.path.insert(0, {str(SCRIPTS)!r})
        from cosmic.errors import CosmicDataWarning
        from cosmic.logs import log_to_file
        log_to_file({str(log)!r})
        warnings.warn("sample 'a': 3 pairing rows point at no image", CosmicDataWarning)
        warnings.warn("a library's deprecation notice", FutureWarning)
        logging.getLogger("cosmic.pairing").warning("cosmic logger warning")
        logging.getLogger("cosmic.pairing").info("cosmic logger info")
        logging.getLogger("matplotlib").warning("library logger warning")
        print("stray stderr", file=sys.stderr)
    """)
    out = subprocess.run([sys.executable, "-c", job], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    logged = log.read_text()
    for line in ("3 pairing rows point at no image", "deprecation notice", "cosmic logger warning",
                 "cosmic logger info", "library logger warning", "stray stderr"):
        assert line in logged
    # the job's stderr (the run's output) gets the data problems only, each naming the log
    assert "3 pairing rows point at no image" in out.stderr and "cosmic logger warning" in out.stderr
    assert str(log) in out.stderr
    for line in ("deprecation notice", "cosmic logger info", "library logger warning", "stray stderr"):
        assert line not in out.stderr
