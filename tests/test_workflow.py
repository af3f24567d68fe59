"""Workflow-level checks: dry runs, configuration validation, lint, conda environments."""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest
import yaml

from conftest import REPO, run_snakemake, write_test_config

RULE_FILES = sorted((REPO / "workflow" / "rules").glob("*.smk"))
ENV_FILES = sorted((REPO / "workflow" / "envs").glob("*.yaml"))


def write_config(tmp_path, **overrides) -> str:
    config = yaml.safe_load((REPO / ".test" / "config" / "config.yaml").read_text())
    config["results"] = str(tmp_path / "results")
    for key, value in overrides.items():
        config[key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def dry_run(tmp_path, configfile, *extra, env=None):
    return run_snakemake("-n", "--configfile", configfile, "--directory", tmp_path, *extra, env=env)


def assert_failed_before_jobs(result, tmp_path, *fragments):
    assert result.returncode != 0, result.stdout + result.stderr
    message = result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    assert not (tmp_path / "results").exists(), "a job ran although the configuration is invalid"


# ------------------------------------------------------------------ dry runs

def test_dry_run_default_config(tmp_path):
    # in a temporary directory: the checkout's own results/ (e.g. after the README's demo) must not matter
    result = run_snakemake("-n", "--quiet", "rules", "--configfile", REPO / "config/config.yaml",
                           "--directory", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout + result.stderr


def test_dry_run_test_config(tmp_path):
    result = run_snakemake("-n", "--configfile", REPO / ".test/config/config.yaml", "--directory", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout


def test_dry_run_slurm_profile(tmp_path, fake_conda):
    result = run_snakemake("-n", "--profile", REPO / "profiles/slurm", "--configfile", REPO / "config/config.yaml",
                           "--directory", tmp_path, env=fake_conda)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo" in result.stdout


def test_cluster_run_refuses_paths_a_shell_would_split_or_execute(tmp_path):
    """Cluster executors put job input paths on the job's command line unquoted: with a results
    folder holding a space and `$(touch PWNED)`, nothing is submitted or executed, and the error
    names the offending setting (the local executor runs such a path: tests/test_integration.py)."""
    config = write_test_config(tmp_path)
    result = run_snakemake("--executor", "slurm", "--jobs", "1", "--configfile", config, "--directory", tmp_path,
                           timeout=300)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "cannot run on a cluster executor" in text and "config 'results'" in text
    assert not list(tmp_path.rglob("PWNED")) and not (tmp_path / ".snakemake" / "slurm_logs").exists()


def test_lint_is_clean():
    result = run_snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("snakefmt") is None, reason="snakefmt not installed")
def test_snakefmt_clean():
    import subprocess

    result = subprocess.run(["snakefmt", "--check", str(REPO)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------ config validation

def test_defaults_are_filled_from_schema(tmp_path):
    # A config with only `demo: true` is complete: everything else comes from the schema.
    path = tmp_path / "minimal.yaml"
    path.write_text(f"results: {tmp_path / 'results'}\n")
    result = dry_run(tmp_path, path)
    assert result.returncode == 0, result.stderr
    assert "fov_010" in result.stdout  # 1020 nuclei per sample at 100 per image (schema defaults)


def test_wrong_type_is_rejected(tmp_path):
    result = dry_run(tmp_path, write_config(tmp_path, seed="abc"))
    assert_failed_before_jobs(result, tmp_path, "key 'seed'", "type integer")


def test_value_outside_range_is_rejected(tmp_path):
    result = dry_run(tmp_path, write_config(tmp_path, demo_dataset={"touching_fraction": 1.5}))
    assert_failed_before_jobs(result, tmp_path, "demo_dataset.touching_fraction", "maximum 1")


def test_unknown_enum_value_is_rejected(tmp_path):
    result = dry_run(tmp_path, write_config(tmp_path, imaging={"z_projection": "mean"}))
    assert_failed_before_jobs(result, tmp_path, "imaging.z_projection", "['max', 'best_focus']")


def test_unknown_config_key_is_rejected(tmp_path):
    result = dry_run(tmp_path, write_config(tmp_path, sead=3))
    assert_failed_before_jobs(result, tmp_path, "unknown key(s) ['sead']", "only the keys")


# ------------------------------------------------------------------ sample sheet

@pytest.fixture
def user_data(tmp_path):
    """A sample sheet pointing at real files (a tiny generated dataset, as a user would have)."""
    from cosmic import demo

    settings = demo.DemoSettings(cells_per_sample=20, nuclei_per_image=20, image_size=256,
                                 samples={"s1": "control"})
    outdir = tmp_path / "raw"
    rng_tables = demo.sample_sheet(settings, outdir)
    for sample, images in demo.image_names(settings).items():
        paths = demo.sample_paths(outdir, sample)
        paths["images"].mkdir(parents=True)
        for name in images:
            (paths["images"] / f"{name}.ome.tif").write_bytes(b"")
        paths["counts"].mkdir(parents=True)
        paths["pairing"].write_text("barcode\timage\ty\tx\n")
        paths["annotations"].write_text("barcode\tresponse\n")
    return rng_tables


def sheet_config(tmp_path, sheet: pd.DataFrame) -> str:
    sheet_path = tmp_path / "samples.tsv"
    sheet.to_csv(sheet_path, sep="\t", index=False)
    return write_config(tmp_path, demo=False, samples=str(sheet_path))


def test_user_sample_sheet_dry_run(tmp_path, user_data):
    result = dry_run(tmp_path, sheet_config(tmp_path, user_data))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Nothing to be done" in result.stdout + result.stderr or "rule demo" not in result.stdout


def test_unknown_sample_column_is_rejected(tmp_path, user_data):
    user_data["batchh"] = "b1"
    result = dry_run(tmp_path, sheet_config(tmp_path, user_data))
    assert_failed_before_jobs(result, tmp_path, "sample 's1'", "unknown key(s) ['batchh']", "meta_")


def test_meta_columns_are_allowed(tmp_path, user_data):
    user_data["meta_batch"] = "b1"
    result = dry_run(tmp_path, sheet_config(tmp_path, user_data))
    assert result.returncode == 0, result.stderr


def test_missing_input_file_is_rejected(tmp_path, user_data):
    user_data.loc[0, "counts"] = str(tmp_path / "nowhere" / "counts.h5ad")
    result = dry_run(tmp_path, sheet_config(tmp_path, user_data))
    assert_failed_before_jobs(result, tmp_path, "sample 's1'", "column 'counts'", "does not exist")


def test_missing_images_are_rejected(tmp_path, user_data):
    user_data.loc[0, "images"] = str(tmp_path / "empty_folder")
    (tmp_path / "empty_folder").mkdir()
    result = dry_run(tmp_path, sheet_config(tmp_path, user_data))
    assert_failed_before_jobs(result, tmp_path, "sample 's1'", "no TIFF images found")


def test_duplicate_samples_are_rejected(tmp_path, user_data):
    sheet = pd.concat([user_data, user_data])
    result = dry_run(tmp_path, sheet_config(tmp_path, sheet))
    assert_failed_before_jobs(result, tmp_path, "more than once", "s1")


def test_bad_sample_id_is_rejected(tmp_path, user_data):
    user_data.loc[0, "sample"] = "bad id/with slash"
    result = dry_run(tmp_path, sheet_config(tmp_path, user_data))
    assert_failed_before_jobs(result, tmp_path, "column 'sample'", "does not match")


def test_morphology_table_samples_skip_imaging(tmp_path, user_data):
    table = tmp_path / "morph.csv"
    table.write_text("barcode,area\n")
    sheet = user_data.drop(columns=["images", "pairing"]).assign(morphology=str(table))
    result = dry_run(tmp_path, sheet_config(tmp_path, sheet))
    assert result.returncode == 0, result.stdout + result.stderr
    planned = result.stdout
    for rule in ("rna", "pair", "cohort", "cosmic", "cell_cycle", "drug_response", "report_index"):
        assert f"rule {rule}:" in planned, rule
    for rule in ("segment", "nuclei", "pretrain", "embed"):
        assert f"rule {rule}:" not in planned, rule


def test_mixed_sample_kinds_are_rejected(tmp_path, user_data):
    table = tmp_path / "morph.csv"
    table.write_text("barcode,area\n")
    other = user_data.assign(sample="s2", images=None, pairing=None, morphology=str(table))
    result = dry_run(tmp_path, sheet_config(tmp_path, pd.concat([user_data, other])))
    assert_failed_before_jobs(result, tmp_path, "mixes samples", "separate cohorts")


def test_images_without_pairing_are_rejected(tmp_path, user_data):
    result = dry_run(tmp_path, sheet_config(tmp_path, user_data.drop(columns=["pairing"])))
    assert_failed_before_jobs(result, tmp_path, "sample 's1'", "pairing")


def test_changed_pairing_row_reruns_only_its_image(tmp_path):
    """The pairing table is split into one positions file per image; a moved position rewrites
    only its image's file, so only that image's segmentation is planned again."""
    import os
    import time

    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "counts").mkdir()
    images = ["fov_a", "fov_b", "fov_c"]
    for name in images:
        (raw / "images" / f"{name}.tif").write_bytes(b"")
    table = pd.DataFrame({"barcode": [f"BC{i}-1" for i in range(6)], "image": images * 2,
                          "y": [10.0, 20.0, 30.0, 40.0, 50.0, 60.0], "x": 5.0})
    table.to_csv(raw / "pairing.tsv", sep="\t", index=False)
    pd.DataFrame([{"sample": "s1", "images": str(raw / "images"), "counts": str(raw / "counts"),
                   "pairing": str(raw / "pairing.tsv")}]).to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    config = write_config(tmp_path, demo=False, samples=str(tmp_path / "samples.tsv"),
                          segmentation={"nucleus_diameter": 30})
    results = tmp_path / "results" / "segmentation" / "s1"
    masks = [results / f"{name}.mask.tif" for name in images]

    def split():  # the checkpoint alone, for real (a dry run cannot know which files it rewrites)
        done = run_snakemake(results / "pairing_by_image", "--cores", "1", "--configfile", config,
                             "--directory", tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr

    split()
    assert sorted(p.name for p in (results / "pairing_by_image").glob("*.tsv")) == [f"{n}.tsv" for n in images]
    past = time.time() - 1000
    for path in [*(raw / "images").iterdir(), raw / "pairing.tsv", *(results / "pairing_by_image").iterdir()]:
        os.utime(path, (past, past))
    for mask in masks:  # segmented after the split
        mask.write_bytes(b"")
        os.utime(mask, (past + 500, past + 500))
    # the masks here are stand-ins without Snakemake's records: judge by modification times only
    unchanged = dry_run(tmp_path, config, *masks, "--rerun-triggers", "mtime")
    assert unchanged.returncode == 0, unchanged.stderr
    assert "Nothing to be done" in unchanged.stdout + unchanged.stderr, unchanged.stdout

    table.loc[4, "y"] = 52.0  # a fov_b position moves
    table.loc[0, "barcode"] = "renamed-1"  # a fov_a barcode changes: positions do not
    table.to_csv(raw / "pairing.tsv", sep="\t", index=False)
    split()
    planned = dry_run(tmp_path, config, *masks, "--rerun-triggers", "mtime")
    assert planned.returncode == 0, planned.stderr
    assert planned.stdout.count("rule segment:") == 1
    assert f"output: {masks[1]}" in planned.stdout  # fov_b only


def test_missing_sample_sheet_is_rejected(tmp_path):
    result = dry_run(tmp_path, write_config(tmp_path, demo=False, samples=str(tmp_path / "none.tsv")))
    assert_failed_before_jobs(result, tmp_path, "none.tsv", "does not exist")


# ------------------------------------------------------------------ conda environments

def test_every_env_file_parses_and_pins_python():
    assert {p.stem for p in ENV_FILES} >= {"imaging", "rna", "torch", "report"}
    for path in ENV_FILES:
        env = yaml.safe_load(path.read_text())
        assert env["channels"], path
        deps = [d for d in env["dependencies"] if isinstance(d, str)]
        assert any(re.match(r"python>=3\.11", d) for d in deps), f"{path} must pin python>=3.11"
        unpinned = [d for d in deps if not re.search(r"[=<>]", d) and d != "imagecodecs"]
        assert not unpinned, f"{path}: unpinned packages {unpinned}"


def test_every_rule_names_an_existing_env_and_a_log():
    rule_re = re.compile(r"^\s*(?:rule|checkpoint) (\w+):", re.M)  # indented: rules inside an `if`
    n_rules = 0
    for path in RULE_FILES:
        text = path.read_text()
        starts = [m.start() for m in rule_re.finditer(text)] + [len(text)]
        for begin, end in zip(starts, starts[1:]):
            body = text[begin:end]
            name = rule_re.match(body).group(1)
            body = body.split("\nif ")[0]  # up to a following top-level `if` block
            n_rules += 1
            env = re.search(r"conda:\s*\n\s*\"([^\"]+)\"", body)
            assert env, f"rule {name} in {path.name} has no conda: directive"
            assert (path.parent / env.group(1)).resolve().exists(), f"rule {name}: {env.group(1)} missing"
            assert "log:" in body, f"rule {name} in {path.name} has no log: directive"
    assert n_rules >= 16


def test_config_readme_documents_every_key():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    readme = (REPO / "config/README.md").read_text()

    def keys(node, prefix=""):
        for key, sub in node.get("properties", {}).items():
            yield prefix + key
            if sub.get("type") == "object":
                yield from keys(sub, prefix + key + ".")

    missing = [k for k in keys(schema) if f"`{k}`" not in readme]
    assert not missing, f"config/README.md does not document {missing}"
    sample_schema = yaml.safe_load((REPO / "workflow/schemas/samples.schema.yaml").read_text())
    missing = [k for k in sample_schema["properties"] if f"`{k}`" not in readme]
    assert not missing, f"config/README.md does not document sample sheet columns {missing}"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    assert "snakemake --cores all" in blocks[0] and "pip install" in blocks[0]
    assert "pytest" in blocks[1] and "pip install" in blocks[1]
    assert "README.md" in (REPO / ".ci" / "run").read_text()
