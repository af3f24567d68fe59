"""Repeated held-out evaluation: one split's fit and scores, and the summary over all splits.

Split ``i`` uses seed ``cosmic.seed + i`` for both the cell split and COSMIC's training, so the
splits are independent draws; the `cosmic` rule fits split 0 (and writes its table), each
`cosmic_split` job one further split, and `cosmic_evaluation` summarises them
(:func:`summarise_splits`). The foundation model is shared by all splits: it is self-supervised
on crops and never sees expression or labels.
"""

from __future__ import annotations

import dataclasses

import pandas as pd

from ..atomic import atomic_path
from .split import SplitData, split_rows
from .summary import PER_SPLIT_COLUMNS, cell_cycle_rows, paired_differences, summarise


def split_params(params, split: int):
    """COSMIC's parameters for split ``split``: the same, with seed ``seed + split``."""
    from ..crossmodal.params import CosmicParams

    params = params if isinstance(params, CosmicParams) else CosmicParams.from_config(params or {})
    return dataclasses.replace(params, seed=params.seed + int(split))


def split_table(split: int, cells, pre, predictions: dict, labels, params, images=None, train=None) -> pd.DataFrame:
    """The per-split rows of a fitted split (``cells``: :class:`~cosmic.crossmodal.run.Cells`; ``images``:
    an :class:`~cosmic.evaluation.image_rows.ImageContext` to score generated nuclei as images; ``train``:
    :meth:`Preprocessor.transform` of the training cells when the caller has it already)."""
    train_cells, test_cells = cells.part("train"), cells.part("test")
    train = pre.transform(train_cells) if train is None else train
    data = SplitData(split=int(split), train=train, val=pre.transform(cells.part("val")),
                     test={k[len("observed_"):]: v for k, v in predictions.items() if k.startswith("observed_")},
                     predictions=predictions, labels=labels)
    evaluation = params.evaluation_params
    rows = split_rows(data, n_generated=evaluation.n_generated, seed=params.seed, max_cells=evaluation.max_cells,
                      level=params.interval_level)
    if images is not None:
        from .image_rows import image_rows

        images = dataclasses.replace(images, preprocessor=pre).with_cohort(cells.cohort)
        rows += image_rows(data, images, train_cells, test_cells, n_generated=evaluation.n_generated,
                           seed=params.seed, max_cells=evaluation.max_cells)
    return pd.DataFrame(rows, columns=list(PER_SPLIT_COLUMNS))


def write_table(table: pd.DataFrame, path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")


def _fitted(cells, params, outdir_model, fitted_model, progress):
    """COSMIC for this split: the `cosmic` rule's model when given (split 0: same seed, same cells),
    else a fit (resumable in ``outdir_model``)."""
    from ..crossmodal.train import fit_cosmic, load_model

    if fitted_model is not None:
        model, pre, fitted_params = load_model(fitted_model, device=params.device)
        if fitted_params.seed != params.seed or fitted_params.fractions != params.fractions:
            raise ValueError(f"{fitted_model} was fitted on another split (seed {fitted_params.seed}); "
                             f"split seed here is {params.seed}")
        return model, pre
    fit = fit_cosmic(cells.cohort, cells.split, params, outdir=outdir_model, progress=progress)
    return fit["model"], fit["preprocessor"]


def run_split(cohort, params, split: int, table_path, outdir_model=None, fitted_model=None, images=None,
              progress: bool = True) -> pd.DataFrame:
    """Score split ``split`` (COSMIC and every baseline) and write its table to ``table_path``.

    COSMIC is fitted on the split's training cells (or, with ``fitted_model``, the `cosmic` rule's model of
    the same split is loaded); ``images``: see :func:`split_table`.
    """
    from threadpoolctl import threadpool_limits

    from ..crossmodal import celltypes
    from ..crossmodal.prediction import predict
    from ..crossmodal.run import split_cohort

    params = split_params(params, split)
    with threadpool_limits(limits=params.num_threads if params.num_threads > 0 else None):
        cells = split_cohort(cohort, params, genes_only=True, progress=progress)
        if params.finetune_blocks > 0 and images is not None:
            from ..crossmodal.finetune import attach_tail_inputs

            attach_tail_inputs(cells.cohort, images.foundation, images.banks, params.finetune_blocks)
        model, pre = _fitted(cells, params, outdir_model, fitted_model, progress)
        train_cells, test_cells = cells.part("train"), cells.part("test")
        predictions = predict(model, pre, test_cells, params.n_samples, seed=params.seed,
                              keep=max(params.n_output_samples, params.evaluation_params.n_generated),
                              level=params.interval_level)
        train = pre.transform(train_cells)
        pc_std = pre.state["pc_std"]
        _, labels, _ = celltypes.rna_labels(train_cells, test_cells, train["rna"] * pc_std,
                                            predictions["observed_rna"] * pc_std, params)
        table = split_table(split, cells, pre, predictions, labels, params, images, train=train)
    write_table(table, table_path)
    return table


def summarise_splits(tables, summary_path, paired_path, cell_cycle=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the per-split tables, write ``summary.tsv`` and ``paired.tsv``; return both.

    ``cell_cycle``: the cell-cycle stage's ``position_agreement.tsv``, whose rows are appended."""
    per_split = pd.concat([pd.read_csv(p, sep="\t") for p in tables], ignore_index=True)
    summary, paired = summarise(per_split), paired_differences(per_split)
    if cell_cycle is not None:
        cycle_summary, cycle_paired = cell_cycle_rows(pd.read_csv(cell_cycle, sep="\t"))
        summary = pd.concat([summary, cycle_summary], ignore_index=True) if len(cycle_summary) else summary
        paired = pd.concat([paired, cycle_paired], ignore_index=True) if len(cycle_paired) else paired
    write_table(summary, summary_path)
    write_table(paired, paired_path)
    return summary, paired

