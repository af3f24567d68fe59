"""Fine-tuning the foundation encoder's last stages with the expression head (``cosmic.finetune_blocks``).

With a foundation embedding (``X_fm``) and the crop banks at hand, :func:`attach_tail_inputs` caches
in the cohort what enters the encoder's last ``finetune_blocks`` stages for every cell
(``obsm["X_fm_tail"]``, frozen) and a copy of those stages (``uns["fm_tail"]``: architecture and
weights). The ``diffusion`` method then trains that copy jointly with the morphology -> expression
head, so the embedding the head reads adapts to expression; the RNA -> morphology direction still
generates the frozen ``X_fm``. Before training, the copy reproduces ``X_fm`` exactly.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .preprocess import TAIL_KEY  # obsm: cached inputs of the encoder's last stages

log = logging.getLogger(__name__)

TAIL_UNS = "fm_tail"  # uns: their architecture ("spec") and weights ("state")


def attach_tail_inputs(cohort, foundation, crop_banks: dict, blocks: int, batch_size: int = 256) -> None:
    """Cache the inputs of ``foundation``'s last ``blocks`` encoder stages for every cell of ``cohort``
    (in place; cells found through obs ``sample`` / ``crop_index`` in ``crop_banks``)."""
    from ..cell_crops import CellCrops
    from ..foundation.tail import split_encoder, tail_inputs, tail_spec

    crops = CellCrops(crop_banks, cohort.obs["sample"].to_numpy(), cohort.obs["crop_index"].to_numpy())
    cohort.obsm[TAIL_KEY] = tail_inputs(foundation, crops, blocks, batch_size)
    _, tail = split_encoder(foundation, blocks)
    cohort.uns[TAIL_UNS] = dict(spec=tail_spec(foundation, blocks),
                                state={k: v.detach().cpu().numpy() for k, v in tail.state_dict().items()})
    log.info("cosmic: fine-tuning the foundation encoder's last %d stage(s) (%d cached inputs per cell)",
             blocks, cohort.obsm[TAIL_KEY].shape[1])


def tail_of(cohort):
    """The encoder tail stored by :func:`attach_tail_inputs` (foundation weights), or None."""
    from ..foundation.tail import tail_from_spec

    stored = cohort.uns.get(TAIL_UNS)
    if stored is None or TAIL_KEY not in cohort.obsm:
        return None
    tail = tail_from_spec(stored["spec"])
    tail.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in stored["state"].items()})
    return tail
