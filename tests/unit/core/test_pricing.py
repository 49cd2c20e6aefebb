"""Token prices: costs reported as usage, priced exactly in micro-dollars by the swarm's model (or another)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.events import WitnessRecord
from schemas.pricing import ModelPrice, TokenUsage
from schemas.requests import CostRequest
from tests.factories import NOW, governed, profile
from worker.core.governor import Governor
from worker.core.money import price_micros
from worker.errors import InvalidRequest

SONNET = ModelPrice(input_usd_per_mtok=3.0, output_usd_per_mtok=15.0, cached_input_usd_per_mtok=0.3)
HAIKU = ModelPrice(input_usd_per_mtok=0.8, output_usd_per_mtok=4.0)


class TestArithmetic:
    def test_usd_per_million_tokens_is_micro_dollars_per_token(self) -> None:
        usage = TokenUsage(input_tokens=1_000, output_tokens=500, cached_input_tokens=2_000)
        assert price_micros(usage, SONNET) == 1_000 * 3 + 500 * 15 + 2_000 * 0.3  # 11,100 micro-dollars

    def test_cached_input_costs_as_input_when_it_has_no_price(self) -> None:
        usage = TokenUsage(input_tokens=0, output_tokens=0, cached_input_tokens=1_000)
        assert price_micros(usage, HAIKU) == 800

    def test_the_one_rounding_is_up_to_the_next_micro_dollar(self) -> None:
        """0.3 micro-dollars per cached token: one token costs 0.3, charged 1; ten cost exactly 3."""
        assert price_micros(TokenUsage(input_tokens=0, output_tokens=0, cached_input_tokens=1), SONNET) == 1
        assert price_micros(TokenUsage(input_tokens=0, output_tokens=0, cached_input_tokens=10), SONNET) == 3
        assert price_micros(TokenUsage(input_tokens=0, output_tokens=0), SONNET) == 0

    def test_no_float_error_at_a_trillion_tokens(self) -> None:
        usage = TokenUsage(input_tokens=10**12, output_tokens=10**12, cached_input_tokens=10**12)
        price = ModelPrice(input_usd_per_mtok=0.1, output_usd_per_mtok=0.7, cached_input_usd_per_mtok=0.01)
        assert price_micros(usage, price) == 10**12 * (100_000 + 700_000 + 10_000) // 1_000_000

    @given(
        tokens=st.tuples(*[st.integers(0, 10**9)] * 3),
        pico=st.tuples(*[st.integers(0, 10**12)] * 3),
    )
    def test_exact_against_integer_arithmetic(self, tokens: tuple[int, int, int], pico: tuple[int, int, int]) -> None:
        """Prices exact to 10^-6 USD per million tokens are exact; the sum is rounded up once."""
        price = ModelPrice(
            input_usd_per_mtok=pico[0] / 1e6, output_usd_per_mtok=pico[1] / 1e6, cached_input_usd_per_mtok=pico[2] / 1e6
        )
        usage = TokenUsage(input_tokens=tokens[0], output_tokens=tokens[1], cached_input_tokens=tokens[2])
        total = sum(t * p for t, p in zip(tokens, pico, strict=True))
        assert price_micros(usage, price) == -(-total // 10**6)


def priced() -> Governor:
    core = governed(profile("a", model="haiku", budget=25.0))
    core.configure(core.policy, [], pricing={"haiku": HAIKU, "sonnet": SONNET})
    return core


class TestCostByUsage:
    def test_priced_by_the_swarms_model_and_deducted(self) -> None:
        """100,000 input and 10,000 output tokens of haiku: 0.08 + 0.04 USD."""
        core = priced()
        reply = core.track_cost("a", "op", None, usage=TokenUsage(input_tokens=100_000, output_tokens=10_000), now=NOW)
        assert (reply.cost, reply.remaining) == (0.12, 24.88)
        [record] = [e for e in core.take_events() if isinstance(e, WitnessRecord) and e.operation == "cost_tracked"]
        assert record.params["usage"] == {"input_tokens": 100_000, "output_tokens": 10_000, "cached_input_tokens": 0}
        assert (record.params["model"], record.params["cost"]) == ("haiku", 0.12)

    def test_a_model_in_the_request_prices_it_instead(self) -> None:
        core = priced()
        usage = TokenUsage(input_tokens=1_000_000, output_tokens=0)
        assert core.track_cost("a", "op", None, usage=usage, model="sonnet", now=NOW).cost == 3.0

    def test_an_unknown_model_is_refused_and_changes_nothing(self) -> None:
        core = priced()
        before = core.export_state()
        usage = TokenUsage(input_tokens=1, output_tokens=1)
        with pytest.raises(InvalidRequest, match=r"no price for model 'opus' \(pricing: lists haiku, sonnet\)"):
            core.track_cost("a", "op", None, usage=usage, model="opus", now=NOW)
        assert core.export_state() == before

    def test_a_priced_cost_is_kept_within_the_largest_amount(self) -> None:
        core = priced()
        usage = TokenUsage(input_tokens=10**12, output_tokens=10**12)
        with pytest.raises(Exception, match="cost must be a finite number"):
            core.track_cost("a", "op", None, usage=usage, model="sonnet", now=NOW)

    def test_prices_survive_a_snapshot(self) -> None:
        core = priced()
        assert Governor.from_state(core.export_state()).pricing == core.pricing


class TestRequest:
    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ({"swarm_id": "a", "operation": "op"}, "exactly one of `cost` and `usage`"),
            (
                {"swarm_id": "a", "operation": "op", "cost": 1.0, "usage": {"input_tokens": 1, "output_tokens": 1}},
                "exactly one of `cost` and `usage`",
            ),
            ({"swarm_id": "a", "operation": "op", "cost": 1.0, "model": "sonnet"}, "`model` prices a `usage`"),
            ({"swarm_id": "a", "operation": "op", "usage": {"input_tokens": -1, "output_tokens": 1}}, ">= 0"),
            ({"swarm_id": "a", "operation": "op", "usage": {"input_tokens": 1}}, "missing required field"),
            (
                {"swarm_id": "a", "operation": "op", "usage": {"input_tokens": 1, "output_tokens": 1, "x": 1}},
                "unknown field",
            ),
        ],
    )
    def test_refused_by_decoding(self, body: dict[str, object], message: str) -> None:
        with pytest.raises(msgspec.ValidationError, match=message):
            msgspec.json.decode(msgspec.json.encode(body), type=CostRequest)


class TestReload:
    def test_a_reload_with_new_prices_applies_them(self) -> None:
        core = priced()
        wanted = msgspec.structs.replace(core.configuration(), pricing={"haiku": SONNET})
        assert core.reload(wanted, [], now=NOW).changed is True
        usage = TokenUsage(input_tokens=1_000_000, output_tokens=0)
        assert core.track_cost("a", "op", None, usage=usage, now=NOW).cost == 3.0
        assert core.reload(wanted, [], now=NOW).changed is False
