"""The capability index of the decision core: which swarms can qualify for a task, without scanning them all.

Each registered swarm has an ordinal (its registration order). Per capability the index keeps

- a bitmask of the ordinals that have it (Python ints: an AND over 100,000 swarms is one C loop), and
- the ordinals sorted best value first (`reputation / cost_per_hour`, then ordinal), for one-capability tasks, and
- the bytes of its bitmask, made when a walk first needs them and kept until the capability's holders change, so
  that a walk down one capability's list tests the others in O(1) each (as many bytes as the mask: in a steady
  registry they are made once).

A bitmask of the *eligible* swarms (budget above zero, breaker closed) is kept up to date on every transition.
A task needing `t` of its `k` capabilities takes the swarms whose masks count at least `t` (bit-sliced counting),
ANDs them with the eligible mask and scores only those. When every candidate needs them all (`t == k`: one
capability, or two or three at the 0.7 minimum), coverage is 1 for each, so value order is score order: the core
walks the value-sorted list of the rarest capability, testing the others' mask bytes, and stops at the first
`limit` that qualify (under `spread`, once no later value can beat the load-discounted scores found; see
`worker.core.matching.rank`). Partial coverage (4 of 5 at 0.7) is served by the masks: k-1 of k by counting who
misses at most one, other needs by bit-sliced counting.
Pure and synchronous, like the rest of the core.
"""

from __future__ import annotations

import bisect
from typing import Protocol


class Indexed(Protocol):
    """What the index needs to know of a swarm."""

    ordinal: int
    capabilities: list[str]
    value: float


class CapabilityIndex:
    """Bitmasks and value-sorted lists over capabilities; see the module docstring."""

    def __init__(self) -> None:
        self.masks: dict[str, int] = {}
        # capability -> [(-value, ordinal)] sorted: best value first, then registration order. Tuples compare in C,
        # so registering is a bisect, not a sort; the swarm's -value float object is shared by all its entries.
        self.ranked: dict[str, list[tuple[float, int]]] = {}
        self._bytes: dict[str, bytes] = {}
        self.eligible = 0
        self._keys: dict[int, tuple[float, int]] = {}

    def add(self, swarm: Indexed, eligible: bool) -> None:
        bit = 1 << swarm.ordinal
        key = (-swarm.value, swarm.ordinal)
        self._keys[swarm.ordinal] = key
        for cap in swarm.capabilities:
            self.masks[cap] = self.masks.get(cap, 0) | bit
            bisect.insort(self.ranked.setdefault(cap, []), key)
            self._bytes.pop(cap, None)
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
            self._bytes.pop(cap, None)
        self.eligible &= ~bit

    def all_of(self, required: list[str]) -> int:
        """The eligible swarms that have every one of the `required` capabilities, as a bitmask."""
        result = self.eligible
        masks = self.masks
        for cap in required:
            result &= masks.get(cap, 0)
        return result

    def ranked_for(self, cap: str) -> list[tuple[float, int]]:
        """(-value, ordinal) of the swarms having `cap`, best value first."""
        return self.ranked.get(cap, [])

    def members(self, cap: str) -> bytes:
        """The bitmask of the swarms having `cap` as bytes, lowest ordinal first (bit `o & 7` of byte `o >> 3`)."""
        data = self._bytes.get(cap)
        if data is None:
            mask = self.masks.get(cap, 0)
            data = self._bytes[cap] = mask.to_bytes((mask.bit_length() + 7) // 8, "little")
        return data

    def set_eligible(self, ordinal: int, eligible: bool) -> None:
        if eligible:
            self.eligible |= 1 << ordinal
        else:
            self.eligible &= ~(1 << ordinal)

    def at_least(self, required: list[str], need: int) -> int:
        """The eligible swarms that have at least `need` of the `required` capabilities, as a bitmask."""
        if need == len(required):
            return self.all_of(required)
        if need == len(required) - 1:
            # The common partial case (3 of 4, 4 of 5, 5 of 6 at the 0.7 minimum): those holding every mask so
            # far and those missing exactly one, each step four operations on non-negative ints (a negative int,
            # as `~mask` is, costs CPython a two's-complement copy per operation).
            every, one = self.eligible, 0
            for cap in required:
                mask = self.masks.get(cap, 0)
                held = every & mask
                one = one & mask | every ^ held
                every = held
            return every | one
        masks = [self.masks.get(cap, 0) for cap in required]
        k = len(masks)
        # ge[j]: swarms counted at least j times so far (ge[0] is everyone: -1 has every bit set). After mask i,
        # a count below need - (k - 1 - i) can no longer reach need, so those ge[j] are never updated.
        ge = [-1] + [0] * need
        for i, mask in enumerate(masks):
            for j in range(min(i + 1, need), max(0, need - (k - 1 - i) - 1), -1):
                ge[j] |= ge[j - 1] & mask
        return ge[need] & self.eligible


_NONZERO = bytes([0] + [1] * 255)
_BITS: tuple[tuple[int, ...], ...] = tuple(tuple(i for i in range(8) if byte >> i & 1) for byte in range(256))


#: A mask's highest PEEL_LIMIT set bits are decoded bit by bit (`bit_length`), the rest byte by byte.
PEEL_LIMIT = 16


def ordinals(mask: int) -> list[int]:
    """The set bits of a non-negative bitmask, lowest first.

    A mask over 100,000 swarms is 12.5 KB. Its top bits are peeled first, up to PEEL_LIMIT of them: `bit_length` is
    O(1) and each cleared bit shortens the int, so a sparse mask (the usual candidates of a task) costs a few µs
    where converting the whole int to bytes costs ten. What remains has its bytes flagged in one C pass
    (`translate`), the nonzero ones found with `find` (memchr), and only those decoded in Python: cost grows with
    the set bits, not with the registry.
    """
    peeled: list[int] = []
    while mask and len(peeled) < PEEL_LIMIT:
        top = mask.bit_length() - 1
        peeled.append(top)
        mask ^= 1 << top
    peeled.reverse()
    if not mask:
        return peeled
    data = mask.to_bytes((mask.bit_length() + 7) // 8, "little")
    find = data.translate(_NONZERO).find
    bits = _BITS
    out: list[int] = []
    pos = find(1)
    while pos >= 0:
        base = pos * 8
        out.extend([base + b for b in bits[data[pos]]])
        pos = find(1, pos + 1)
    out.extend(peeled)
    return out
