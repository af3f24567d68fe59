"""Fine-tuning the foundation encoder's last stages with the expression head (cosmic.finetune_blocks):
the cut encoder reproduces X_fm exactly, fine-tuning changes only the copy, and a saved model reloads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cosmic import crossmodal as cm
from cosmic.crossmodal.finetune import TAIL_KEY, attach_tail_inputs
from cosmic.crossmodal.prediction import predict
from cosmic.foundation import FoundationParams, embed_array
from cosmic.foundation.nets import build_model
from cosmic.foundation.tail import split_encoder, tail_inputs
from cosmic.splits import make_splits
from test_generate_split import _cohort_with_banks
from test_residual_diffusion import DIFFUSION


@pytest.fixture(scope="module")
def foundation():
    torch.manual_seed(0)
    params = FoundationParams.from_config({"preset": "tiny", "embed_dim": 32, "patch_size": 4})
    return build_model(params, 2, 12).eval()


@pytest.mark.parametrize("encoder", ["cnn", "vit"])
@pytest.mark.parametrize("blocks", [1, 2])
def test_the_cut_encoder_reproduces_the_embedding(encoder, blocks):
    torch.manual_seed(0)
    params = FoundationParams.from_config({"preset": "tiny", "encoder": encoder, "embed_dim": 32, "patch_size": 4,
                                           "depth": 2, "heads": 2})
    model = build_model(params, 2, 12).eval()
    crops = np.random.default_rng(0).gamma(2.0, 0.3, size=(10, 2, 12, 12)).astype(np.float32)
    _, tail = split_encoder(model, blocks)
    with torch.no_grad():
        out = tail(torch.from_numpy(tail_inputs(model, crops, blocks))).numpy()
    np.testing.assert_allclose(out, embed_array(model, crops), rtol=1e-5, atol=1e-5)


def test_fine_tuning_trains_a_copy_of_the_tail_and_the_model_reloads(foundation, tmp_path):
    a, banks = _cohort_with_banks(tmp_path, n=200)
    crops = np.concatenate([np.load(banks[s]) for s in sorted(banks)])
    rows = {s: i for i, s in enumerate(sorted(banks))}
    offsets = np.cumsum([0] + [len(np.load(banks[s])) for s in sorted(banks)])
    order = offsets[[rows[s] for s in a.obs["sample"].astype(str)]] + a.obs["crop_index"].to_numpy()
    a.obsm["X_fm"] = embed_array(foundation, crops[order].astype(np.float32))
    attach_tail_inputs(a, foundation, banks, 1)
    assert a.obsm[TAIL_KEY].shape[0] == a.n_obs
    before = {k: v.clone() for k, v in split_encoder(foundation, 1)[1].state_dict().items()}
    split = make_splits(a.obs, seed=0)
    params = cm.CosmicParams.from_config({**DIFFUSION, "representation": "fm", "finetune_blocks": 1})
    fit = cm.fit_cosmic(a, split, params, outdir=tmp_path / "model", progress=False)
    tail = fit["model"].tail
    assert tail is not None
    changed = [k for k, v in tail.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # the copy was trained ...
    assert all(torch.equal(v, before[k]) for k, v in split_encoder(foundation, 1)[1].state_dict().items())  # ... only
    test = a[(split == "test").to_numpy()]
    first = predict(fit["model"], fit["preprocessor"], test, n_samples=4, seed=0)
    model, pre, _ = cm.load_model(tmp_path / "model" / "model.pt")
    again = predict(model, pre, test, n_samples=4, seed=0)
    np.testing.assert_allclose(again["expr_mean"], first["expr_mean"], rtol=1e-5, atol=1e-6)
