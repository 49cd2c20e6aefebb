"""Paged reads: `status`, `history` and `assign` with `explain` answer a page at a time, and a walk over the pages
sees every item exactly once, whatever is registered, removed or assigned between two pages."""

from __future__ import annotations

from schemas.profiles import SwarmProfile
from schemas.requests import PAGE_DEFAULT
from tests.factories import NOW, SIP, governed, profile
from worker.core.governor import Governor


def numbered(i: int) -> SwarmProfile:
    """Swarm `s0000`, `s0001`, ... costing 2.0 + i an hour: the lower the number, the better the value."""
    return profile(f"s{i:04d}", cost_per_hour=2.0 + i)


def status_walk(core: Governor, limit: int | None = None) -> list[list[str]]:
    """The swarm ids of every status page, from the first to the last."""
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        reply = core.status(now=NOW, limit=limit, cursor=cursor)
        pages.append([s.swarm_id for s in reply.swarms])
        if reply.next_cursor is None:
            return pages
        cursor = reply.next_cursor


class TestStatusPages:
    def test_a_walk_sees_every_swarm_once_in_registration_order(self) -> None:
        """With 250 swarms, the default page is 100 swarms; three pages hold all 250, in order, once each."""
        core = governed(*(numbered(i) for i in range(250)))
        pages = status_walk(core)
        assert [len(p) for p in pages] == [PAGE_DEFAULT, PAGE_DEFAULT, 50]
        assert [s for page in pages for s in page] == [f"s{i:04d}" for i in range(250)]

    def test_a_page_reports_budgets_breakers_and_holds_of_its_swarms_only(self) -> None:
        """Budgets, breakers and holds in a page are exactly those of the page's swarms."""
        core = governed(*(numbered(i) for i in range(5)))
        core.track_cost("s0001", "op", 30.0, now=NOW)  # trips s0001
        core.assign("t", [SIP], now=NOW, max_cost=100.0, estimated_cost=1.0)  # holds on s0000 (the cheapest)
        first = core.status(now=NOW, limit=2)
        second = core.status(now=NOW, limit=2, cursor=first.next_cursor)
        assert (first.budgets, list(first.breakers), [h.swarm_id for h in first.holds]) == (
            {"s0000": 25.0, "s0001": -5.0},
            ["s0001"],
            ["s0000"],
        )
        assert (second.budgets, second.breakers, second.holds) == ({"s0002": 25.0, "s0003": 25.0}, {}, [])
        assert second.next_cursor is not None

    def test_removing_or_adding_a_swarm_between_pages_shifts_nothing(self) -> None:
        """A swarm removed from the first page, and one registered during the walk, neither repeat nor hide others."""
        core = governed(*(numbered(i) for i in range(6)))
        first = core.status(now=NOW, limit=3)
        core.deregister_swarm("s0000", now=NOW)
        core.register_swarm(numbered(6), now=NOW)
        second = core.status(now=NOW, limit=3, cursor=first.next_cursor)
        assert [s.swarm_id for s in first.swarms] == ["s0000", "s0001", "s0002"]
        assert [s.swarm_id for s in second.swarms] == ["s0003", "s0004", "s0005"]
        third = core.status(now=NOW, limit=3, cursor=second.next_cursor)
        assert ([s.swarm_id for s in third.swarms], third.next_cursor) == (["s0006"], None)

    def test_an_empty_registry_is_one_empty_page(self) -> None:
        """No swarms: one page, empty, with no next cursor."""
        reply = Governor().status(now=NOW)
        assert (reply.swarms, reply.budgets, reply.next_cursor) == ([], {}, None)


class TestHistoryPages:
    def test_a_walk_goes_from_the_newest_page_to_the_oldest(self) -> None:
        """250 assignments, pages of 100: newest first, each page oldest-first inside, every record once."""
        core = governed(numbered(0))
        for i in range(250):
            core.assign(f"t{i}", [SIP], now=NOW + i, max_cost=100.0)
        seen: list[str] = []
        cursor: str | None = None
        sizes = []
        while True:
            assignments, _, cursor = core.history(None, cursor)
            sizes.append(len(assignments))
            seen = [r.task_id for r in assignments] + seen
            if cursor is None:
                break
        assert sizes == [100, 100, 50]
        assert seen == [f"t{i}" for i in range(250)]

    def test_new_records_during_a_walk_do_not_shift_it(self) -> None:
        """Assignments made after the first page was read appear in no later page of the walk."""
        core = governed(numbered(0))
        for i in range(10):
            core.assign(f"t{i}", [SIP], now=NOW, max_cost=100.0)
        first, _, cursor = core.history(4, None)
        for i in range(10, 15):
            core.assign(f"t{i}", [SIP], now=NOW, max_cost=100.0)
        second, _, cursor = core.history(4, cursor)
        assert [r.task_id for r in first] == ["t6", "t7", "t8", "t9"]
        assert [r.task_id for r in second] == ["t2", "t3", "t4", "t5"]
        third, _, cursor = core.history(4, cursor)
        assert ([r.task_id for r in third], cursor) == (["t0", "t1"], None)

    def test_the_walk_ends_where_the_bounded_history_ends(self) -> None:
        """With a history limit of 5, only the 5 newest of 12 are kept: the walk ends after them."""
        core = governed(numbered(0), history_limit=5)
        for i in range(12):
            core.assign(f"t{i}", [SIP], now=NOW, max_cost=100.0)
        first, _, cursor = core.history(3, None)
        second, _, cursor = core.history(3, cursor)
        assert ([r.task_id for r in first], [r.task_id for r in second], cursor) == (
            ["t9", "t10", "t11"],
            ["t7", "t8"],
            None,
        )

    def test_resets_and_assignments_page_together(self) -> None:
        """One cursor walks both lists: a page holds up to `limit` of each, and the walk ends when both do."""
        core = governed(numbered(0))
        for i in range(3):
            core.assign(f"t{i}", [SIP], now=NOW, max_cost=100.0)
        for i in range(5):
            core.track_cost("s0000", "op", 1000.0, now=NOW)
            core.reset_circuit_breaker("s0000", 25.0, approved_by=f"op{i}", now=NOW)
        a1, r1, cursor = core.history(2, None)
        a2, r2, cursor2 = core.history(2, cursor)
        a3, r3, cursor3 = core.history(2, cursor2)
        assert [r.task_id for r in a1 + a2 + a3] == ["t1", "t2", "t0"]
        assert [r.approved_by for r in r1 + r2 + r3] == ["op3", "op4", "op1", "op2", "op0"]
        assert cursor3 is None


class TestExplainPages:
    def test_explain_pages_follow_the_registry(self) -> None:
        """`explain` explains `explain_limit` swarms at a time and names the cursor of the next page."""
        core = governed(*(numbered(i) for i in range(5)))
        first = core.assign("t", [SIP], now=NOW, max_cost=3.5, explain=True, explain_limit=3)
        assert isinstance(first.explanation, list)
        assert [e.swarm_id for e in first.explanation] == ["s0000", "s0001", "s0002"]
        assert first.rejected == {"s0002": "cost_above_max"}
        assert isinstance(first.explain_next_cursor, str)
        second = core.assign(
            "t2", [SIP], now=NOW, max_cost=3.5, explain=True, explain_limit=3, explain_cursor=first.explain_next_cursor
        )
        assert isinstance(second.explanation, list)
        assert [e.swarm_id for e in second.explanation] == ["s0003", "s0004"]
        assert second.explain_next_cursor is None
