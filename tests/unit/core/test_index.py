"""The capability index's bit work against brute force: decoding masks (sparse ones peeled, dense ones by bytes)
and counting how many of a task's capabilities each swarm holds."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.index import PEEL_LIMIT, CapabilityIndex, ordinals

# Bit positions up to 100,000 swarms, in sets on both sides of the peel limit.
positions = st.sets(st.integers(0, 100_000), max_size=3 * PEEL_LIMIT)


class TestOrdinals:
    @settings(max_examples=500, deadline=None)
    @given(positions)
    def test_set_bits_lowest_first(self, bits: set[int]) -> None:
        mask = sum(1 << b for b in bits)
        assert ordinals(mask) == sorted(bits)

    def test_both_sides_of_the_peel_limit(self) -> None:
        for count in (0, 1, PEEL_LIMIT - 1, PEEL_LIMIT, PEEL_LIMIT + 1, 5 * PEEL_LIMIT):
            bits = list(range(7, 7 + 97 * count, 97))
            assert ordinals(sum(1 << b for b in bits)) == bits


@dataclass
class Held:
    ordinal: int
    capabilities: list[str]
    value: float = 1.0


CAPS = [f"c:{i}" for i in range(8)]


class TestAtLeast:
    @settings(max_examples=300, deadline=None)
    @given(
        holdings=st.lists(st.sets(st.sampled_from(CAPS)), max_size=40),
        required=st.lists(st.sampled_from(CAPS), min_size=1, max_size=6, unique=True),
        ineligible=st.sets(st.integers(0, 39)),
        data=st.data(),
    )
    def test_counts_what_each_swarm_holds(
        self, holdings: list[set[str]], required: list[str], ineligible: set[int], data: st.DataObject
    ) -> None:
        need = data.draw(st.integers(1, len(required)))
        index = CapabilityIndex()
        for ordinal, caps in enumerate(holdings):
            index.add(Held(ordinal, sorted(caps)), eligible=ordinal not in ineligible)
        expected = [
            o for o, caps in enumerate(holdings) if o not in ineligible and len(caps.intersection(required)) >= need
        ]
        assert ordinals(index.at_least(required, need)) == expected


class TestMembers:
    def test_the_bytes_follow_the_holders_after_they_were_made(self) -> None:
        """members() is made once and kept, so every change of a capability's holders must drop it."""
        index = CapabilityIndex()

        def holders(cap: str) -> list[int]:
            data = index.members(cap)
            return [o for o in range(len(data) * 8) if data[o >> 3] >> (o & 7) & 1]

        a, b, c = Held(3, ["c:0", "c:1"]), Held(17, ["c:0"]), Held(900, ["c:1"])
        for swarm in (a, b):
            index.add(swarm, eligible=True)
        assert holders("c:0") == [3, 17] and holders("c:1") == [3]
        index.add(c, eligible=False)  # eligibility is not the masks' business
        assert holders("c:1") == [3, 900]
        index.remove(a)
        assert holders("c:0") == [17] and holders("c:1") == [900]
        index.remove(c)
        assert holders("c:1") == [] and holders("c:7") == []
