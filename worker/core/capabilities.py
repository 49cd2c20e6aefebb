"""The capability vocabulary: the seed's 22 built-in `category:skill` names plus those the config declares."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator

from worker.errors import UnknownCapability

BUILTIN_CAPABILITIES: tuple[str, ...] = (
    "code-analysis:rust",
    "code-analysis:python",
    "code-analysis:javascript",
    "code-analysis:go",
    "code-analysis:typescript",
    "code-analysis:cpp",
    "integration:sip",
    "integration:ndi",
    "integration:webrtc",
    "integration:h323",
    "infra:distributed-systems",
    "infra:networking",
    "infra:kubernetes",
    "infra:cloud-platforms",
    "cli:design",
    "cli:testing",
    "cli:documentation",
    "architecture:patterns",
    "architecture:microservices",
    "architecture:security",
    "docs:technical-writing",
    "docs:api-design",
)


class Vocabulary:
    """The known capabilities; checks names and suggests the closest known ones for a typo."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self.extra: list[str] = [c for c in dict.fromkeys(extra) if c not in BUILTIN_CAPABILITIES]
        # name -> the one string object for it: every swarm and task shares it (100,000 swarms decoded from JSON
        # would otherwise hold their own copies, about 60 bytes each), and membership tests compare identities.
        self._known: dict[str, str] = {c: c for c in (*BUILTIN_CAPABILITIES, *self.extra)}

    def __contains__(self, name: object) -> bool:
        return name in self._known

    def __iter__(self) -> Iterator[str]:
        return iter(self._known)

    def __len__(self) -> int:
        return len(self._known)

    def check(self, names: Iterable[str]) -> list[str]:
        """Return the names without duplicates, in order, as the vocabulary's own strings; raise UnknownCapability
        naming the first unknown one."""
        known = self._known
        try:
            return [known[name] for name in dict.fromkeys(names)]
        except KeyError:
            unknown = next(name for name in dict.fromkeys(names) if name not in known)
            raise UnknownCapability(self.explain_unknown(unknown)) from None

    def explain_unknown(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._known), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown capability {name!r}{hint}"
