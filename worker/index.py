"""The capability index of the decision core: which swarms can qualify for a task, without scanning them all.

Each registered swarm has an ordinal (its registration order). Per capability the index keeps

- a bitmask of the ordinals that have it (Python ints: an AND over 100,000 swarms is one C loop), and
- the ordinals sorted best value first (`reputation / cost_per_hour`, then ordinal), for one-capability tasks.

A bitmask of the *eligible* swarms (budget above zero, breaker closed) is kept up to date on every transition.
A task needing `t` of its `k` capabilities takes the swarms whose masks count at least `t` (bit-sliced counting),
ANDs them with the eligible mask and scores only those; a one-capability task walks its sorted list and stops at
the first `limit` eligible swarms within the cost ceiling. Partial coverage (4 of 5 at 0.7) is served the same way.
Pure and synchronous, like the rest of the core.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Protocol


class Indexed(Protocol):
    """What the index needs to know of a swarm."""

    ordinal: int
    capabilities: list[str]
    value: float
    cost_per_hour: float


class CapabilityIndex:
    """Bitmasks and value-sorted lists over capabilities; see the module docstring."""

    def __init__(self) -> None:
        self.masks: dict[str, int] = {}
        # capability -> [(-value, ordinal)] sorted: best value first, then registration order. Tuples compare in C,
        # so registering is a bisect, not a sort; the swarm's -value float object is shared by all its entries.
        self.ranked: dict[str, list[tuple[float, int]]] = {}
        self.eligible = 0
        self._keys: dict[int, tuple[float, int]] = {}

    def add(self, swarm: Indexed, eligible: bool) -> None:
        bit = 1 << swarm.ordinal
        key = (-swarm.value, swarm.ordinal)
        self._keys[swarm.ordinal] = key
        for cap in swarm.capabilities:
            self.masks[cap] = self.masks.get(cap, 0) | bit
            bisect.insort(self.ranked.setdefault(cap, []), key)
        if eligible:
            self.eligible |= bit

    def remove(self, swarm: Indexed) -> None:
        bit = 1 << swarm.ordinal
        key = self._keys.pop(swarm.ordinal)
        for cap in swarm.capabilities:
            mask = self.masks[cap] & ~bit
            if mask:
                self.masks[cap] = mask
            else:
                del self.masks[cap]
            ranked = self.ranked[cap]
            del ranked[bisect.bisect_left(ranked, key)]
            if not ranked:
                del self.ranked[cap]
        self.eligible &= ~bit

    def ranked_for(self, cap: str) -> list[tuple[float, int]]:
        """(-value, ordinal) of the swarms having `cap`, best value first."""
        return self.ranked.get(cap, [])

    def set_eligible(self, ordinal: int, eligible: bool) -> None:
        if eligible:
            self.eligible |= 1 << ordinal
        else:
            self.eligible &= ~(1 << ordinal)

    def at_least(self, required: list[str], need: int) -> int:
        """The eligible swarms that have at least `need` of the `required` capabilities, as a bitmask."""
        masks = [self.masks.get(cap, 0) for cap in required]
        if need == len(masks):
            result = self.eligible
            for mask in masks:
                result &= mask
            return result
        # ge[j]: swarms counted at least j times so far (ge[0] is everyone: -1 has every bit set).
        ge = [-1] + [0] * need
        for i, mask in enumerate(masks):
            for j in range(min(i + 1, need), 0, -1):
                ge[j] |= ge[j - 1] & mask
        return ge[need] & self.eligible


def ordinals(mask: int) -> Iterator[int]:
    """The set bits of a (sparse) non-negative bitmask, lowest first."""
    if not mask:
        return
    bits = bin(mask)
    top = len(bits) - 1
    find = bits.rfind
    end = len(bits)
    while True:
        pos = find("1", 2, end)
        if pos < 0:
            return
        yield top - pos
        end = pos
