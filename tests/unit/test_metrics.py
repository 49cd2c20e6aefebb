"""The lean histogram exports exactly what prometheus-client's Histogram would for the same observations."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from worker.ops.metrics import LATENCY_BUCKETS_MS, LeanHistogram


def exposition(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_lean_histogram_matches_prometheus_client() -> None:
    """Values below, on and between bounds and above the last one land in the same cumulative buckets."""
    values = [0.0, 0.01, 0.05, 0.050001, 0.3, 1.0, 7.0, 1000.0, 2000.0, 0.1]
    lean = LeanHistogram("latency_ms", "Latency.", LATENCY_BUCKETS_MS)
    ours = CollectorRegistry()
    ours.register(lean)
    theirs = CollectorRegistry()
    reference = Histogram("latency_ms", "Latency.", buckets=LATENCY_BUCKETS_MS, registry=theirs)
    for value in values:
        lean.observe(value)
        reference.observe(value)
    assert exposition(ours) == exposition(theirs)
    assert 'latency_ms_bucket{le="0.05"} 3.0' in exposition(ours)
