"""Sample sheet handling and readable configuration errors.

Schema validation itself is done by ``snakemake.utils.validate`` in ``workflow/rules/common.smk``;
this module turns its errors into messages that name the key and what is allowed, and resolves
the files a sample sheet points at (so a missing file stops the run before any job starts).
"""

from __future__ import annotations

import functools
import glob
import shlex
from pathlib import Path

import jsonschema
import pandas as pd

from .errors import CosmicInputError

IMAGE_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif")
SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


@functools.lru_cache(maxsize=1)
def config_schema() -> dict:
    """The configuration schema: the one source of every key's type, range and default."""
    import yaml

    return yaml.safe_load(SCHEMA.read_text())


def check_against_schema(params, block: str) -> None:
    """Check a parameter dataclass's values against the schema's ranges for config block ``block``.

    Used by dataclasses built outside Snakemake (tests, notebooks, benchmarks), so the schema's
    ranges apply there too without a hand-written copy.
    """
    import dataclasses

    def plain(value):
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    values = {f.name: plain(getattr(params, f.name)) for f in dataclasses.fields(params)}
    block_schema = config_schema()
    for part in block.split("."):  # nested blocks such as "cosmic.evaluation"
        block_schema = block_schema["properties"][part]
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(block_schema).iter_errors(values))
    if error is not None:
        raise CosmicInputError(f"config '{block}': key '{_key_path(error)}': {_message(error)}. "
                               f"Allowed: {_allowed(error)}. See config/README.md.")


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _allowed(error: jsonschema.ValidationError) -> str:
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "enum":
        return f"one of {error.validator_value}"
    if error.validator == "type":
        return f"a value of type {error.validator_value}"
    if error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return f"{error.validator} {error.validator_value}"
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = " or columns starting with 'meta_'" if "^meta_" in schema.get("patternProperties", {}) else ""
        return f"only the keys {allowed}{extra}"
    if error.validator == "pattern":
        return f"text matching {error.validator_value!r}"
    if error.validator == "required":
        return f"the keys {error.validator_value}"
    if error.validator == "oneOf":
        return "one of: " + "; ".join(
            ", ".join(f"{k}={v}" for k, v in s.items() if k != "description") for s in error.validator_value
        )
    return f"a value satisfying {error.validator}={error.validator_value!r}"


def _innermost(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """Pick the most specific error (schema errors nest for oneOf / anyOf)."""
    best = jsonschema.exceptions.best_match([error])
    return best or error


def _message(err: jsonschema.ValidationError) -> str:
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        import re

        schema = err.schema if isinstance(err.schema, dict) else {}
        patterns = list(schema.get("patternProperties", {}))
        unknown = [k for k in err.instance if k not in schema.get("properties", {})
                   and not any(re.search(p, k) for p in patterns)]
        return f"unknown key(s) {unknown}"
    return err.message


def explain_config_error(error: jsonschema.ValidationError, configfile: str) -> str:
    err = _innermost(error)
    return (
        f"Invalid configuration in {configfile}: key '{_key_path(err)}': {_message(err)}. "
        f"Allowed: {_allowed(err)}. Fix the value in {configfile} (see config/README.md)."
    )


def explain_sample_error(error: jsonschema.ValidationError, sheet: str, row: int, sample) -> str:
    err = _innermost(error)
    where = f"column '{_key_path(err)}'" if err.absolute_path else "row"
    return (
        f"Invalid sample sheet {sheet}, row {row + 1} (sample '{sample}'): {where}: {_message(err)}. "
        f"Allowed: {_allowed(err)}. Fix the sample sheet (see config/README.md)."
    )


def find_validation_error(exc: BaseException) -> jsonschema.ValidationError | None:
    """Dig the jsonschema error out of a Snakemake WorkflowError."""
    stack = [exc]
    while stack:
        item = stack.pop()
        if isinstance(item, jsonschema.ValidationError):
            return item
        if isinstance(item, BaseException):
            stack.extend(a for a in item.args if isinstance(a, BaseException))
            if item.__cause__ is not None:
                stack.append(item.__cause__)
            if item.__context__ is not None:
                stack.append(item.__context__)
    return None


def read_sample_sheet(path) -> pd.DataFrame:
    """Read the sample sheet as text columns; reject duplicate or missing sample ids."""
    path = Path(path)
    if not path.exists():
        raise CosmicInputError(
            f"Sample sheet '{path}' does not exist. Create it (see config/samples.tsv for the columns) "
            "or set 'samples' in config/config.yaml, or set 'demo: true' to run the demo."
        )
    sheet = pd.read_csv(path, sep="\t", dtype=str, comment="#").dropna(how="all")
    sheet.columns = [c.strip() for c in sheet.columns]
    if "sample" not in sheet.columns:
        raise CosmicInputError(f"Sample sheet '{path}' has no 'sample' column (it must be tab-separated).")
    dup = sheet["sample"][sheet["sample"].duplicated()].unique().tolist()
    if dup:
        raise CosmicInputError(f"Sample sheet '{path}' lists samples more than once: {dup}. Give each row a unique id.")
    return sheet.set_index("sample", drop=False)


def image_name(path) -> str:
    """The image id used in output paths: the file name without its TIFF suffix."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def resolve_images(sample: str, spec: str) -> dict[str, str]:
    """Map image id -> path for a sample's ``images`` entry (a folder or a glob pattern)."""
    spec_path = Path(spec)
    if spec_path.is_dir():
        paths = [p for p in sorted(spec_path.iterdir()) if p.name.lower().endswith(IMAGE_SUFFIXES)]
    else:
        paths = [Path(p) for p in sorted(glob.glob(spec))]
    if not paths:
        raise CosmicInputError(
            f"sample '{sample}': no TIFF images found at '{spec}' (column 'images'). Give a folder holding "
            "*.tif/*.tiff files or a glob pattern such as 'raw/{sample}/*.tif', relative to where snakemake runs."
        )
    images: dict[str, str] = {}
    for p in paths:
        name = image_name(p)
        if name in images:
            raise CosmicInputError(
                f"sample '{sample}': images '{images[name]}' and '{p}' have the same name '{name}'. Rename one."
            )
        images[name] = str(p)
    return images


# Mask file names accepted for an image `<name>` (cellpose writes `<name>_cp_masks.tif`, and for
# `<name>.ome.tif` images `<name>.ome_cp_masks.tif`); any of them may also end in `.tiff`.
MASK_SUFFIXES = ("_cp_masks", "_masks", ".mask", "")
_SHOWN = 10  # problems listed per kind in a mask error


def mask_file_names(name: str) -> list[str]:
    """The mask file names accepted for image ``name`` (``.tiff`` works wherever ``.tif`` does)."""
    return [f"{name}{suffix}.tif" for suffix in MASK_SUFFIXES]


def _mask_targets(file_name: str) -> set[str]:
    """The image names a mask file name can belong to."""
    stem = next((file_name[: -len(ext)] for ext in (".tiff", ".tif") if file_name.lower().endswith(ext)), None)
    names = set()
    for suffix in MASK_SUFFIXES if stem else ():
        if stem.lower().endswith(suffix):
            base = stem[: len(stem) - len(suffix)]
            names |= {base, base[:-4]} if base.lower().endswith(".ome") else {base}
    return names


def _listed(items: list[str]) -> list[str]:
    return items[:_SHOWN] + ([f"... and {len(items) - _SHOWN} more"] if len(items) > _SHOWN else [])


def _mask_paths(sample: str, spec: str) -> list[Path]:
    spec_path = Path(spec)
    paths = sorted(spec_path.iterdir()) if spec_path.is_dir() else [Path(p) for p in sorted(glob.glob(spec))]
    paths = [p for p in paths if p.is_file() and p.name.lower().endswith((".tif", ".tiff"))]
    if not paths:
        raise CosmicInputError(
            f"sample '{sample}': no mask TIFFs found at '{spec}' (column 'masks'). Give a folder (or a glob "
            "pattern) of label TIFFs named after the images: <image>.tif, <image>_cp_masks.tif (cellpose), "
            "<image>_masks.tif or <image>.mask.tif, relative to where snakemake runs."
        )
    return paths


def resolve_masks(sample: str, spec: str, images: dict[str, str]) -> dict[str, str]:
    """Map image id -> label mask for a sample's ``masks`` entry (a folder or a glob pattern).

    Each image needs exactly one mask named after it (see :data:`MASK_SUFFIXES`); a missing or
    ambiguous mask, or a mask matching no image, stops the run with every problem listed.
    """
    own = {Path(p).resolve() for p in images.values()}  # masks may sit next to the images
    found: dict[str, list[str]] = {name: [] for name in images}
    orphans, problems = [], []
    for path in _mask_paths(sample, spec):
        if path.resolve() in own:
            continue
        targets = sorted(n for n in _mask_targets(path.name) if n in found)
        for name in targets:
            found[name].append(str(path))
        if not targets:
            orphans.append(path.name)
    for name, masks in found.items():
        if not masks:
            hint = ("; it looks like a mask itself: keep masks out of the images folder (cellpose --savedir) "
                    "or select the images with a glob") if _mask_targets(f"{name}.tif") - {name} else ""
            problems.append(f"image '{name}' ({images[name]}) has no mask: expected one of "
                            f"{', '.join(mask_file_names(name))}{hint}")
        elif len(masks) > 1:
            problems.append(f"image '{name}' has {len(masks)} masks ({', '.join(masks)}); keep one of them")
    problems = _listed(problems)
    if orphans:
        problems.append(f"{len(orphans)} mask file(s) match no image of the sample: "
                        f"{', '.join(_listed(orphans))}; rename them after their image or move them out")
    if problems:
        raise CosmicInputError(
            f"sample '{sample}', column 'masks' ('{spec}'):\n  " + "\n  ".join(problems)
            + "\nEach image needs exactly one label mask named <image>.tif, <image>.tiff, <image>_masks.tif, "
            "<image>_cp_masks.tif (cellpose) or <image>.mask.tif. Fix the file names or the 'masks' column."
        )
    return {name: masks[0] for name, masks in found.items()}


def has_value(row, column) -> bool:
    value = row.get(column) if hasattr(row, "get") else None
    return value is not None and not (isinstance(value, float) and pd.isna(value)) and str(value) != ""


def morphology_mode(sheet: pd.DataFrame) -> bool:
    """True when every sample gives a precomputed morphology table instead of images + pairing.

    Each row needs either ``images`` + ``pairing`` or ``morphology``; mixing the two kinds in one
    cohort is refused because their morphology features would not be comparable.
    """
    kinds = {}
    for sample, row in sheet.iterrows():
        table, imaged = has_value(row, "morphology"), has_value(row, "images") or has_value(row, "pairing")
        if table and imaged:
            raise CosmicInputError(
                f"sample '{sample}': the sample sheet gives both 'morphology' and 'images'/'pairing'. "
                "Give either images + pairing (the workflow segments and measures nuclei) or a morphology table."
            )
        if not table and not imaged:
            raise CosmicInputError(
                f"sample '{sample}': the sample sheet gives neither 'images' + 'pairing' nor 'morphology'. "
                "Add the TIFF folder and pairing table, or a per-cell morphology table keyed by barcode."
            )
        kinds[sample] = "morphology table" if table else "images"
    if len(set(kinds.values())) > 1:
        raise CosmicInputError(
            "The sample sheet mixes samples with images and samples with precomputed morphology tables "
            f"({kinds}); their features are not comparable. Run them as separate cohorts."
        )
    return bool(kinds) and next(iter(kinds.values())) == "morphology table"


def check_sample_inputs(sheet: pd.DataFrame) -> None:
    """Fail before any job runs when a file named in the sample sheet is missing."""
    problems = []
    for sample, row in sheet.iterrows():
        for column in ("counts", "pairing", "morphology", "annotations", "embedding"):
            if has_value(row, column) and not Path(row[column]).exists():
                problems.append(f"sample '{sample}': column '{column}' points at '{row[column]}', which does not exist")
    if problems:
        raise CosmicInputError(
            "Missing input files in the sample sheet:\n  " + "\n  ".join(problems)
            + "\nFix the paths (relative to where snakemake runs) or add the files."
        )
    morphology_mode(sheet)


SHEET_PATH_COLUMNS = ("images", "masks", "counts", "pairing", "morphology", "annotations", "embedding")


def check_cluster_paths(results: str, sheet: pd.DataFrame, images: dict) -> None:
    """Fail before anything is submitted when a path would be split or executed on a cluster.

    Snakemake's cluster executors put a job's input files on the job's command line unquoted
    (``--wait-for-files``, snakemake-interface-executor-plugins 9.4), so a space splits a path and
    ``$(...)`` or a backtick runs as a command in the job's shell. Local runs quote nothing through a
    shell and accept such paths.
    """
    paths = {"config 'results'": results}
    for sample, row in sheet.iterrows():
        for column in SHEET_PATH_COLUMNS:
            if has_value(row, column):
                paths[f"sample '{sample}', column '{column}'"] = str(row[column])
        for name, path in images.get(sample, {}).items():
            paths[f"sample '{sample}', image '{name}'"] = str(path)
    unsafe = [f"{where}: '{path}'" for where, path in paths.items() if shlex.quote(path) != path]
    if unsafe:
        raise CosmicInputError(
            "Paths with spaces or shell characters ($, `, ;, quotes, parentheses, ...) cannot run on a cluster "
            "executor: Snakemake passes job input paths to the job's shell unquoted, which would split or "
            "execute them.\n  " + "\n  ".join(unsafe[:20])
            + "\nRename them (letters, digits and . _ - / + = : , @ % only), or run with the local executor."
        )


def params_from_config(cls, block: str, mapping=None, **overrides):
    """Build a parameter dataclass from the config block ``block``; unknown keys are errors.

    Every stage's ``*Params.from_config`` goes through here, so a typo in any block gets the
    same message listing the allowed keys.
    """
    import dataclasses

    values = dict(mapping or {})
    values.update(overrides)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise CosmicInputError(
            f"config '{block}': unknown key(s) {', '.join(unknown)}; allowed keys: {', '.join(sorted(names))}"
        )
    try:
        return cls(**values)
    except CosmicInputError:
        raise
    except (TypeError, ValueError) as exc:
        raise CosmicInputError(f"config '{block}': {exc}") from exc


def reference_images(images_by_sample: dict, limit: int = 16) -> list[str]:
    """Images the run's nucleus diameter is measured on: up to ``limit`` images, evenly spaced in
    name order, of the first sample that has images (adding samples later does not change them)."""
    for images in images_by_sample.values():
        if images:
            names = sorted(images)
            step = len(names) / min(limit, len(names))
            return [images[names[int(i * step)]] for i in range(min(limit, len(names)))]
    return []
