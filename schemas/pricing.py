"""Token prices: what a model's tokens cost, and the usage a cost report may carry instead of an amount."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

TokenCount = Annotated[int, Meta(ge=0, le=1_000_000_000_000)]
"""Tokens of one kind in one report (at most 10^12)."""

PricePerMTok = Annotated[float, Meta(ge=0.0, le=1_000_000.0)]
"""USD per million tokens (the same number is micro-dollars per token); exact to 10^-6 of it."""


class ModelPrice(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One model's prices, USD per million tokens (`pricing:` in the config)."""

    input_usd_per_mtok: PricePerMTok
    output_usd_per_mtok: PricePerMTok
    cached_input_usd_per_mtok: PricePerMTok | None = None
    """Missing: cached input tokens cost as much as other input tokens."""


class TokenUsage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The tokens an operation used, priced by the governor (`governor.cost`'s `usage`)."""

    input_tokens: TokenCount
    output_tokens: TokenCount
    cached_input_tokens: TokenCount = 0
    """Input tokens read from a cache, priced at `cached_input_usd_per_mtok`; not counted in `input_tokens`."""
