"""The decision core's probe runs in a steady state: however many samples it takes, the tasks it keeps open stay
under the policy's `max_open_tasks` (a full run takes 200,000 samples, twice the default limit)."""

from __future__ import annotations

import functools

import pytest

from schemas.policy import ResourcePolicy
from worker.bench import core_probe


def test_more_samples_than_the_open_task_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core_probe, "ResourcePolicy", functools.partial(ResourcePolicy, max_open_tasks=60))
    monkeypatch.setattr(core_probe, "OPEN_TASKS", 50)
    monkeypatch.setattr(core_probe, "HOLDS", 5)
    result = core_probe.core_probe(100, samples=2_000, budget_s=60.0)
    assert result["samples"] == 2_000
    assert result["assigned"] > 0.1  # well over 60 tasks assigned, so the limit was reached and kept


def test_fixed_work_is_timed_beside_the_assigns() -> None:
    """The probe also times a loop of fixed work with the assigns' median: its p50 and p99 are reported."""
    result = core_probe.core_probe(100, samples=1_000, budget_s=60.0)
    assert 0 < result["fixed_p50_us"] <= result["fixed_p99_us"]
