"""A workaround for a Snakemake scheduler bug that the SLURM profile's segment groups hit.

Snakemake caches group jobs by (group id, member jobs) in ``DAG.group_job_factory``, and
``group-components`` (profiles/slurm: ``segment=100``) *merges* cached group jobs in place, so a
cache key no longer describes its object's members. Whenever the DAG is re-planned during a run, as
after the ``pairing_by_image`` checkpoint, ``DAG.update_groups`` gets those stale, merged objects
back: with members that were replaced by the re-planned jobs and a member order computed before
the merge. The run then either dies (``KeyError: segment`` in ``DAG.update_ready``) or submits group
jobs that still contain the replaced jobs and ends with "BUG: Out of jobs ready to be started".
Which of the two, or neither, depends on the order in which jobs finish (snakemake/snakemake#4202
describes the same crash for checkpoints with groups; seen with Snakemake 9.27.1).

The fix: every ``update_groups`` call starts from an empty cache, so its group jobs are built from
the current DAG. Group jobs compare by their members, so nothing depends on the cached identity.
"""

from __future__ import annotations

import functools

_PATCHED = "_cosmic_fresh_group_jobs"


def build_group_jobs_afresh(dag_class) -> bool:
    """Make ``dag_class.update_groups`` (``snakemake.dag.DAG``, passed in by the workflow: the package
    does not import Snakemake) clear the group-job cache first; True when the patch is in place.

    Idempotent. Leaves Snakemake untouched (returns False) if its internals are not the expected
    ones, so a Snakemake that changed them runs as it is.
    """
    update_groups = getattr(dag_class, "update_groups", None)
    if update_groups is None:
        return False
    if getattr(update_groups, _PATCHED, False):
        return True

    @functools.wraps(update_groups)
    def update_groups_afresh(self, *args, **kwargs):
        cache = getattr(getattr(self, "group_job_factory", None), "cache", None)
        if isinstance(cache, dict):
            cache.clear()
        return update_groups(self, *args, **kwargs)

    setattr(update_groups_afresh, _PATCHED, True)
    dag_class.update_groups = update_groups_afresh
    return True
