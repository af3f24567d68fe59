"""The workaround for Snakemake's stale group-job cache (cosmic.snakemake_compat)."""

from __future__ import annotations

from types import SimpleNamespace

import snakemake.api  # noqa: F401  (before snakemake.jobs: its modules import each other)
from snakemake.jobs import GroupJobFactory

from cosmic.snakemake_compat import build_group_jobs_afresh


class _Job(SimpleNamespace):
    __hash__ = object.__hash__


def _jobs(n):
    dag = SimpleNamespace(workflow=SimpleNamespace(execution_settings=SimpleNamespace(attempt=1)))
    return [_Job(dag=dag, name=f"job{i}") for i in range(n)]


def test_snakemake_still_returns_merged_group_jobs_for_a_single_job_key():
    """The upstream behaviour the patch exists for: group-components merges cached group jobs in
    place, so asking the factory again for one job's group returns a group with other members.
    If this starts failing, Snakemake fixed it and the patch can go."""
    factory = GroupJobFactory()
    first, second = _jobs(2)
    group = factory.new("segment", [first], None)
    group.merge(factory.new("segment", [second], None))  # what DAG._update_group_components does
    again = factory.new("segment", [first], None)
    assert again is group and set(again.jobs) == {first, second}


def test_update_groups_starts_from_an_empty_cache():
    calls = []

    class FakeDAG:
        def __init__(self):
            self.group_job_factory = GroupJobFactory()

        def update_groups(self, argument=None):
            calls.append((dict(self.group_job_factory.cache), argument))
            self.group_job_factory.cache["stale"] = object()
            return "updated"

    assert build_group_jobs_afresh(FakeDAG) is True
    assert build_group_jobs_afresh(FakeDAG) is True  # idempotent: wrapped once
    dag = FakeDAG()
    assert dag.update_groups("x") == "updated" and dag.update_groups() == "updated"
    assert calls == [({}, "x"), ({}, None)]
    assert FakeDAG.update_groups.__name__ == "update_groups"


def test_a_snakemake_without_the_expected_internals_is_left_alone():
    class Other:
        pass

    assert build_group_jobs_afresh(Other) is False
    assert not hasattr(Other, "update_groups")


def test_snakemakes_own_dag_is_patched():
    from snakemake.dag import DAG

    assert build_group_jobs_afresh(DAG) is True
    assert getattr(DAG.update_groups, "_cosmic_fresh_group_jobs", False)
