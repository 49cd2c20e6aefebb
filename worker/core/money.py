"""Money in integer micro-dollars, so that sums are exact however many costs arrive; and the checks of amounts."""

from __future__ import annotations

from collections.abc import Sequence

from schemas.pricing import ModelPrice, TokenUsage
from schemas.types import MAX_USD
from worker.errors import InvalidBudget, InvalidCost

MICROS = 1_000_000


def to_micros(usd: float) -> int:
    """USD to integer micro-dollars (rounded to the nearest)."""
    return round(usd * MICROS)


def to_usd(micros: int) -> float:
    return micros / MICROS


PICO_PER_MICRO = 1_000_000


def price_micros(usage: TokenUsage, price: ModelPrice) -> int:
    """What `usage` costs at `price`, in micro-dollars, exactly: a price in USD per million tokens is micro-dollars
    per token, taken exact to 10^-6 of it (pico-dollars per token, an integer); the tokens times those prices are
    summed in pico-dollars and the sum is rounded up to the next micro-dollar, the one rounding (a budget is never
    charged less than the tokens cost)."""

    def pico(usd_per_mtok: float) -> int:
        return round(usd_per_mtok * PICO_PER_MICRO)

    cached = price.cached_input_usd_per_mtok
    total = (
        usage.input_tokens * pico(price.input_usd_per_mtok)
        + usage.output_tokens * pico(price.output_usd_per_mtok)
        + usage.cached_input_tokens * pico(price.input_usd_per_mtok if cached is None else cached)
    )
    return -(-total // PICO_PER_MICRO)


def check_budget(value: float, field: str, limit: float = MAX_USD) -> None:
    """A budget is a finite amount above zero (also in micro-dollars) and at most `limit`."""
    if not (0.0 < value <= limit) or to_micros(value) <= 0:  # also refuses NaN and infinity
        raise InvalidBudget(f"{field} must be a finite number > 0 (at most {limit:g}), got {value!r}")


def check_cost(value: float, field: str, limit: float) -> None:
    """A cost (or an estimate of one) is a finite amount from 0 to `limit`."""
    if not 0.0 <= value <= limit:  # also refuses NaN
        raise InvalidCost(f"{field} must be a finite number from 0 to {limit:g}, got {value!r}")


def crossed(fractions: Sequence[float], alerted: float, spent: int, limit: int) -> list[float]:
    """The alert fractions (ascending) above `alerted`, the highest fired so far, that `spent` has reached of `limit`,
    lowest first. Most costs cross none, and the first fraction not fired yet says so without a list."""
    for fraction in fractions:
        if fraction > alerted:
            if spent < fraction * limit:
                return []
            break
    else:
        return []
    return [f for f in fractions if f > alerted and spent >= f * limit]
