"""The assignment and reset history: the newest `limit` records of each, paged by absolute position.

Positions count every record ever kept, so records added while a client pages never shift its walk.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import TypeVar

import msgspec

from schemas.replies import AssignmentRecord, ResetRecord

_T = TypeVar("_T")


class History:
    """Bounded deques of assignment and reset records, with the count of each ever appended."""

    def __init__(self, limit: int) -> None:
        self.assignments: deque[AssignmentRecord] = deque(maxlen=limit)
        self.resets: deque[ResetRecord] = deque(maxlen=limit)
        self.assignments_seq = 0  # records ever appended to each: the position of the next one
        self.resets_seq = 0

    def assigned(self, record: AssignmentRecord) -> None:
        self.assignments_seq += 1
        self.assignments.append(record)

    def closed(self, seq: int, task_id: str, outcome: str, duration_s: float, total_cost: float) -> None:
        """Give the assignment record at position `seq` its outcome (if it is still kept)."""
        i = seq - (self.assignments_seq - len(self.assignments))
        if 0 <= i < len(self.assignments) and self.assignments[i].task_id == task_id:
            self.assignments[i] = msgspec.structs.replace(
                self.assignments[i], outcome=outcome, duration_s=duration_s, total_cost=total_cost
            )

    def reset(self, record: ResetRecord) -> None:
        self.resets_seq += 1
        self.resets.append(record)

    def page(self, limit: int, cursor: str | None) -> tuple[list[AssignmentRecord], list[ResetRecord], str | None]:
        """The `limit` newest records of each kind older than the positions `cursor` names (None: the newest),
        newest last, and the cursor of the page before (None: no older records are kept)."""
        before_a, before_r = (int(p) for p in cursor.split(".")) if cursor is not None else (None, None)
        assignments, at_a = _page(self.assignments, self.assignments_seq, limit, before_a)
        resets, at_r = _page(self.resets, self.resets_seq, limit, before_r)
        more = at_a is not None or at_r is not None
        return assignments, resets, f"{at_a or 0}.{at_r or 0}" if more else None

    def restore(
        self, assignments: list[AssignmentRecord], resets: list[ResetRecord], assignments_seq: int, resets_seq: int
    ) -> None:
        self.assignments.extend(assignments)
        self.resets.extend(resets)
        self.assignments_seq = max(assignments_seq, len(assignments))
        self.resets_seq = max(resets_seq, len(resets))


def newest(records: deque[_T], limit: int | None) -> list[_T]:
    """The `limit` newest records (all when None), newest last."""
    kept = list(records)
    return kept if limit is None else kept[-limit:] if limit > 0 else []


def _page(records: deque[_T], total: int, limit: int, before: int | None) -> tuple[list[_T], int | None]:
    """The `limit` newest of `records` (a bounded deque that has held `total` records ever) older than the
    position `before` (None: the newest), oldest first; and the position to continue from, None when no older
    record is kept."""
    base = total - len(records)  # the position of records[0]
    end = len(records) if before is None else max(0, min(len(records), before - base))
    start = max(0, end - limit)
    return list(itertools.islice(records, start, end)), base + start if start > 0 else None
