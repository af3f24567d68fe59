"""The schema is the one source of every parameter: dataclass defaults, ranges and config/README.md agree.

Each config block is read by a ``*Params`` dataclass in the package; these tests fail when a
default, a range or the documentation drifts from ``workflow/schemas/config.schema.yaml``.
"""

import dataclasses
import importlib
import json
import re
from pathlib import Path

import pytest
import yaml

from cosmic.errors import CosmicInputError

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())

# config block -> (module, dataclass) that reads it
PARAMS = {
    "segmentation": ("cosmic.segmentation", "SegmentationParams"),
    "nuclei": ("cosmic.nuclei", "NucleiParams"),
    "rna": ("cosmic.rna", "RnaParams"),
    "pairing": ("cosmic.pairing", "PairingParams"),
    "morphology_table": ("cosmic.morphology_table", "MorphologyTableParams"),
    "foundation": ("cosmic.foundation.params", "FoundationParams"),
    "cosmic": ("cosmic.crossmodal.params", "CosmicParams"),
    "cosmic.evaluation": ("cosmic.evaluation.params", "EvaluationParams"),
    "generate": ("cosmic.generate.params", "GenerateParams"),
    "cell_cycle": ("cosmic.cell_cycle", "CellCycleParams"),
    "drug_response": ("cosmic.drug_response", "DrugResponseParams"),
    "demo_dataset": ("cosmic.demo", "DemoSettings"),
}


def _block_schema(block):
    schema = SCHEMA
    for part in block.split("."):
        schema = schema["properties"][part]
    return schema


def _params_class(block):
    module, name = PARAMS[block]
    return getattr(importlib.import_module(module), name)


def _default(field):
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return dataclasses.MISSING
    return list(value) if isinstance(value, tuple) else value


def test_every_config_block_with_keys_has_a_params_class():
    blocks = {k for k, v in SCHEMA["properties"].items() if v.get("type") == "object" and v.get("properties")}
    blocks |= {f"cosmic.{k}" for k, v in SCHEMA["properties"]["cosmic"]["properties"].items()
               if v.get("type") == "object"}
    # imaging and external_embedding are read by the rules directly (channel name, file column).
    assert blocks - set(PARAMS) == {"imaging", "external_embedding"}


@pytest.mark.parametrize("block", sorted(PARAMS))
def test_dataclass_fields_and_defaults_match_the_schema(block):
    cls = _params_class(block)
    keys = _block_schema(block)["properties"]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(fields) == set(keys), f"{block}: fields and schema keys differ"
    for key, spec in keys.items():
        default = _default(fields[key])
        if block == "demo_dataset" and key == "samples":  # stored as {sample: treatment}
            default = [{"sample": s, "treatment": t} for s, t in default.items()]
        assert "default" in spec, f"{block}.{key} has no schema default"
        assert default == spec["default"], f"{block}.{key}: dataclass {default!r}, schema {spec['default']!r}"


def _out_of_range(spec):
    """(bound, a value just outside it) for every numeric bound of a schema entry."""
    step = 1 if spec.get("type") == "integer" else 1e-3
    if "minimum" in spec:
        yield "minimum", spec["minimum"] - step
    if "maximum" in spec:
        yield "maximum", spec["maximum"] + step
    if "exclusiveMinimum" in spec:
        yield "exclusiveMinimum", spec["exclusiveMinimum"]
    if "exclusiveMaximum" in spec:
        yield "exclusiveMaximum", spec["exclusiveMaximum"]
    if "enum" in spec:
        yield "enum", "not-an-allowed-value"


@pytest.mark.parametrize("block", sorted(set(PARAMS) - {"demo_dataset"}))
def test_dataclass_rejects_what_the_schema_rejects(block):
    cls = _params_class(block)
    accepted = []
    for key, spec in _block_schema(block)["properties"].items():
        if spec.get("type") == "object":
            continue  # nested blocks are checked under their own name
        for bound, value in _out_of_range(spec):
            try:
                cls(**{key: value})
            except (CosmicInputError, ValueError, TypeError):
                continue
            accepted.append(f"{key}={value!r} ({bound} {spec.get(bound, '')})")
    assert not accepted, f"{block}: the dataclass accepts values the schema rejects: {accepted}"


def _readme_defaults():
    text = (REPO / "config/README.md").read_text()
    text = text[text.index("## `config/config.yaml`"):]
    text = text[: text.index("\n## ", 10)] if "\n## " in text[10:] else text
    rows = {}
    for line in text.splitlines():
        match = re.match(r"\|\s*`([\w.]+)`\s*\|\s*(.*?)\s*\|", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def _schema_keys(props, prefix=""):
    for key, spec in props.items():
        yield prefix + key, spec
        if spec.get("type") == "object" and "properties" in spec:
            yield from _schema_keys(spec["properties"], prefix + key + ".")


def _shown(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value).replace('"', "")
    return str(value)


def test_config_readme_states_the_schema_defaults():
    rows = _readme_defaults()
    wrong = []
    for key, spec in _schema_keys(SCHEMA["properties"]):
        documented = rows.get(key)
        assert documented is not None, f"config/README.md does not document `{key}`"
        if key == "demo_dataset.samples":
            continue  # a list of mappings, described in words
        want = _shown(spec["default"])
        if documented.strip("`") == want:
            continue
        if spec["default"] is None and documented.startswith("preset"):
            continue  # foundation keys: null = taken from the preset
        wrong.append(f"{key}: README {documented!r}, schema {want!r}")
    assert not wrong, "config/README.md defaults differ from the schema:\n" + "\n".join(wrong)
