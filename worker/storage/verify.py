"""`governor ledger verify`: read the whole ledger and its snapshots, and list what recovery would pass over or trip on.

    report = await verify(ledger)         # a Ledger on a connection, not set up: verify creates nothing
    print(report.summary())               # exit 0 when report.clean, else 1

Found are: messages that are not ledger batches, entries of unknown kinds or with bodies that are not their kind's
request (recovery quarantines such messages, see `worker.storage.entries.decode_message`), sequences missing from
the middle of the stream, messages that do not follow the one before them in the hash chain (each names the
SHA-256 of its predecessor: a message changed, removed or written by another breaks it), snapshots (or their
descriptions) that do not decode, snapshots whose name and content disagree or that lie beyond the stream's last
sequence, objects in the snapshot store that are no snapshots, and a stream trimmed past every readable snapshot
(then no recovery can rebuild the state). It only reads, so it may run beside a serving governor: what is appended
while it reads is left for the next run.
"""

from __future__ import annotations

import msgspec
import nats.errors
import nats.js.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

from worker.storage.entries import LedgerForeign, batch_prev, decode_message, short_reason
from worker.storage.journal import Ledger, message_hash
from worker.storage.snapshots import LEGACY_SNAPSHOT_NAME, snapshot_seq


class Problem(msgspec.Struct, frozen=True):
    """One thing found: `seq` is the ledger sequence it concerns (0 for the snapshot store), `reason` says what (one
    printable line: see `problem`)."""

    seq: int
    reason: str


def problem(seq: int, reason: str) -> Problem:
    """A Problem whose reason is cut to one short printable line (`worker.storage.journal.short_reason`)."""
    return Problem(seq, short_reason(reason))


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """What `verify` read and found."""

    stream: str
    first_seq: int
    last_seq: int
    messages: int
    """Ledger messages read."""
    entries: int
    """Entries in the messages that decode."""
    snapshots: list[int]
    """The sequences of the snapshots that decode and lie within the stream, oldest first."""
    problems: list[Problem]

    @property
    def clean(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """A few lines for an operator: what was read, then one line per problem."""
        stored = f" (at {', '.join(map(str, self.snapshots))})" if self.snapshots else ""
        lines = [
            f"ledger {self.stream}: sequences {self.first_seq} to {self.last_seq}, {self.messages} messages read, "
            f"{self.entries} entries; {_count(len(self.snapshots), 'snapshot')}{stored}",
            f"{_count(len(self.problems), 'problem')} found" + (":" if self.problems else ""),
        ]
        lines += [f"  sequence {p.seq}: {p.reason}" if p.seq else f"  {p.reason}" for p in self.problems]
        return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


async def verify(ledger: Ledger) -> Report:
    """Read `ledger`'s stream from its first message to its last and every snapshot; report what is wrong.

    Raises `nats.js.errors.NotFoundError` when the stream or the snapshot store does not exist.
    """
    await ledger.attach()
    info = await ledger.js.stream_info(ledger.stream)
    first, last = int(info.state.first_seq), int(info.state.last_seq)
    problems: list[Problem] = []
    messages, entries = await _read_stream(ledger, first, last, problems)
    snapshots = await _read_snapshots(ledger, problems)
    newest = max(snapshots, default=0)
    if first > 1 and newest < first - 1:
        problems.append(
            problem(
                first,
                f"the entries before {first} are trimmed but no snapshot that decodes reaches {first - 1} "
                f"(newest: {newest or 'none'}): recovery cannot rebuild the state",
            )
        )
    return Report(
        stream=ledger.stream,
        first_seq=first,
        last_seq=last,
        messages=messages,
        entries=entries,
        snapshots=sorted(snapshots),
        problems=problems,
    )


async def _read_stream(ledger: Ledger, first: int, last: int, problems: list[Problem]) -> tuple[int, int]:
    """Decode every message from `first` to `last`: (messages read, entries in those that decode)."""
    if last < first or last == 0:
        return 0, 0
    sub = await ledger.js.subscribe(
        ledger.subject,
        stream=ledger.stream,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first),
    )
    messages = entries = 0
    expected = first
    previous = ""  # the hash of the message before, when it was read
    chained = False  # a message naming the one before it was seen: every later one must
    try:
        while expected <= last:
            try:
                msg = await sub.next_msg(timeout=ledger.timeout)
            except nats.errors.TimeoutError:
                if await _trimmed_past(ledger, expected):  # the rest was trimmed while we read: not missing
                    break
                raise
            seq = msg.metadata.sequence.stream
            if seq > expected:
                previous = ""  # the chain is checked again from the message after the gap
                if not await _trimmed_past(ledger, seq - 1):
                    more = f", and so are {expected + 1} to {seq - 1}" if seq - 1 > expected else ""
                    problems.append(problem(expected, f"missing from the stream{more}"))
            messages += 1
            try:
                entries += len(decode_message(msg.data))
                prev = batch_prev(msg.data)
                if previous and (prev or chained) and prev != previous:
                    problems.append(
                        problem(
                            seq,
                            f"breaks the hash chain: it follows {prev[:16] or 'nothing'}, the message "
                            f"before it hashes to {previous[:16]} (changed, removed or written by another)",
                        )
                    )
                chained = chained or bool(prev)
            except LedgerForeign as foreign:
                problems.append(problem(seq, foreign.reason))
            previous = message_hash(msg.data)
            expected = seq + 1
    finally:
        await sub.unsubscribe()
    return messages, entries


async def _trimmed_past(ledger: Ledger, seq: int) -> bool:
    """Whether the stream now starts after `seq` (a serving governor trims it after each snapshot)."""
    info = await ledger.js.stream_info(ledger.stream)
    return int(info.state.first_seq) > seq


async def _read_snapshots(ledger: Ledger, problems: list[Problem]) -> list[int]:
    """Decode every object in the snapshot store: the sequences of the snapshots that decode."""
    live, unreadable = await ledger.snapshot_objects()
    for name, reason in unreadable:
        problems.append(problem(0, f"snapshot {name}: {reason}"))
    found: list[tuple[str, int]] = []
    for name in live:
        named = snapshot_seq(name)
        if named is None and name != LEGACY_SNAPSHOT_NAME:
            problems.append(problem(0, f"the snapshot store holds {name[:40]!r}, which is no snapshot"))
            continue
        try:
            state = await ledger.read_snapshot(name)
        except LedgerForeign as foreign:
            problems.append(problem(0, f"snapshot {name} {foreign.reason}"))
            continue
        except nats.js.errors.ObjectNotFoundError:
            continue  # deleted since it was listed: a serving governor stored a newer one
        except TimeoutError:
            problems.append(problem(0, f"snapshot {name} could not be read in {ledger.snapshot_timeout:g}s"))
            continue
        if named is not None and state.seq != named:
            problems.append(problem(0, f"snapshot {name} holds the state at sequence {state.seq}, not {named}"))
            continue
        found.append((name, state.seq))
    last = await ledger.last_sequence()  # read after the snapshots: one stored meanwhile is not beyond it
    for name, seq in found:
        if seq > last:
            problems.append(problem(0, f"snapshot {name} is at sequence {seq}, beyond the ledger's last ({last})"))
    return [seq for _, seq in found if seq <= last]
