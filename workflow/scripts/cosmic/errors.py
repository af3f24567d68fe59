"""Exceptions raised for bad user input.

Every message names the offending file (and sample when known) and says how to fix it,
so a failed cluster job is understandable from its log alone.
"""


class CosmicInputError(ValueError):
    """Input data or configuration that COSMIC cannot use as given."""


class CosmicDataWarning(UserWarning):
    """Input data that COSMIC can use, but with something dropped or suspicious (named in the message).

    Rule scripts log every warning to the rule's log; these are also printed to the job's own stderr,
    so they show in the run's output and not only in a log file (see :mod:`cosmic.logs`).
    """


def describe(path=None, sample=None) -> str:
    """Return a ``"sample 'x', file 'y'"`` prefix for error messages."""
    parts = []
    if sample is not None:
        parts.append(f"sample '{sample}'")
    if path is not None:
        parts.append(f"file '{path}'")
    return ", ".join(parts) if parts else "input"


def require_flag(block: str, name: str, value) -> bool:
    """``value`` of the config key ``<block>.<name>`` as a bool; a :class:`CosmicInputError` unless it is
    true or false (a Python or numpy bool: a YAML ``yes``/``1``/``"true"`` is not silently accepted)."""
    import numpy as np

    if not isinstance(value, (bool, np.bool_)):
        raise CosmicInputError(f"{block} parameter {name} must be true or false, got {value!r}")
    return bool(value)
