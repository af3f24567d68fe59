"""Scoring against the demo generator's ground truth, one module per stage.

Nothing here is used on users' data: these functions read ``results/demo/`` (the true masks,
``ground_truth.tsv``, ``genes.tsv``, ``oracle.json``) and say how close each stage came to it.
"""
