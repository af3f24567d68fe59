"""Which morphology representation COSMIC models, decided once.

``cosmic.representation`` (``auto`` | ``fm`` | ``morph``) resolves to a :class:`Representation`:
the foundation-model embedding ``obsm["X_fm"]`` (which the foundation decoder renders back to
nuclei images) or the region-property features ``obsm["X_morph"]``. ``auto`` takes the foundation
embedding when there is one. The Snakefile resolves it before any data exist, from whether the
samples have images (:func:`for_workflow`); the package resolves it from the cohort's ``obsm``
(:func:`for_cohort`). Both follow the same rule, :func:`resolve`.

Standard library only: ``workflow/rules/common.smk`` imports this module at parse time.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from ..errors import CosmicInputError

CHOICES = ("auto", "fm", "morph")  # values of cosmic.representation


@dataclass(frozen=True)
class Representation:
    """A resolved morphology representation."""

    name: str  # "fm" | "morph" (the string stored in checkpoints and metrics.json)
    obsm_key: str  # where the cohort holds it
    decodes_images: bool  # the foundation decoder can render it as nuclei images
    description: str

    @property
    def is_foundation(self) -> bool:
        return self.name == "fm"

    def other(self) -> "Representation":
        """The other observed representation (read beside this one in the cell-type transfer)."""
        return MORPH if self.is_foundation else FM


FM = Representation("fm", "X_fm", True, "foundation-model embedding")
MORPH = Representation("morph", "X_morph", False, "region-property features")
_BY_NAME = {r.name: r for r in (FM, MORPH)}


def named(name: str) -> Representation:
    """The representation stored under ``name`` (``"fm"`` or ``"morph"``) in a fitted state."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise CosmicInputError(f"unknown morphology representation {name!r}; expected one of "
                               f"{sorted(_BY_NAME)}") from None


def check_choice(requested: str) -> str:
    """``requested`` when it is a valid ``cosmic.representation``, else a CosmicInputError."""
    if requested not in CHOICES:
        raise CosmicInputError(f"cosmic parameter representation must be one of {CHOICES}, got {requested!r}")
    return requested


def resolve(requested: str, has_foundation: bool, missing_foundation: str = "") -> Representation:
    """``auto`` -> the foundation embedding when there is one, else region properties; ``fm``
    without a foundation embedding is an error (``missing_foundation`` says why there is none)."""
    check_choice(requested)
    if requested == "fm" and not has_foundation:
        why = missing_foundation or "there is no foundation-model embedding"
        raise CosmicInputError(f"cosmic.representation is 'fm', but {why}. Set cosmic.representation to "
                               "'auto' or 'morph'.")
    return FM if has_foundation and requested != "morph" else MORPH


def for_workflow(requested: str, has_images: bool) -> Representation:
    """Resolution in the Snakefile, before data exist: images are segmented, cropped and embedded
    by the foundation model, so the cohort has ``X_fm`` exactly when the samples have images."""
    return resolve(requested, has_images, "the samples give morphology tables (no images, so no "
                                          "foundation-model embedding)")


def for_cohort(obsm: Container[str], requested: str = "auto") -> Representation:
    """Resolution from a cohort's ``obsm`` (an AnnData's ``obsm`` or its keys)."""
    rep = resolve(requested, FM.obsm_key in obsm, "the cohort has no obsm['X_fm'] (foundation embedding); "
                                                   "run the embed stage")
    if MORPH.obsm_key not in obsm:
        raise CosmicInputError("the cohort has no obsm['X_morph'] (region-property features); it must be "
                               "written by the pair stage")
    return rep
