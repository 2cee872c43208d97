import socket
import sys
from collections.abc import Iterator
from decimal import Decimal

import pytest
from genai_prices import Usage, calc_price, data_snapshot
from genai_prices.data import providers
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.pricing import Price, PriceBook, cost_usd, max_output_for

MTOK = 1e-6

FLAT = Price(
    input_per_token=2 * MTOK,
    output_per_token=8 * MTOK,
    cached_input_per_token=0.5 * MTOK,
    cache_write_per_token=2.5 * MTOK,
    model_id="flat",
)
TIERED = Price(
    input_per_token=3 * MTOK,
    output_per_token=15 * MTOK,
    cached_input_per_token=0.3 * MTOK,
    cache_write_per_token=3.75 * MTOK,
    model_id="tiered",
    cache_write_1h_per_token=6 * MTOK,
    tiers=(
        (
            200_000,
            Price(
                input_per_token=6 * MTOK,
                output_per_token=22.5 * MTOK,
                cached_input_per_token=0.6 * MTOK,
                cache_write_per_token=7.5 * MTOK,
                model_id="tiered",
                cache_write_1h_per_token=12 * MTOK,
            ),
        ),
    ),
)


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook()


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def empty_custom_snapshot() -> Iterator[None]:
    data_snapshot.set_custom_snapshot(
        data_snapshot.DataSnapshot(providers=[], from_auto_update=True)
    )
    yield
    data_snapshot.set_custom_snapshot(None)


def sane(price: Price) -> None:
    assert 1e-8 < price.input_per_token < 1e-4
    assert price.input_per_token < price.output_per_token < 1e-3
    assert 0 < price.cached_input_per_token < price.input_per_token


@pytest.mark.parametrize(
    ("model", "provider"),
    [("gpt-4o", "openai"), ("gpt-4o-2024-08-06", "openai"), ("gpt-4o", None)],
)
def test_gpt_4o(book: PriceBook, model: str, provider: str | None) -> None:
    price = book.lookup(model, provider)
    assert price is not None
    assert price.model_id == "gpt-4o"
    sane(price)
    assert price.tiers == ()


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("claude-sonnet-4-5", "anthropic"),
        ("claude-sonnet-4-5-20250929", "anthropic"),
        ("claude-sonnet-4-5", None),
        # An OpenAI-compatible endpoint serving Claude.
        ("claude-sonnet-4-5", "openai"),
    ],
)
def test_claude_sonnet_4_5(book: PriceBook, model: str, provider: str | None) -> None:
    price = book.lookup(model, provider)
    assert price is not None
    assert price.model_id == "claude-sonnet-4-5"
    sane(price)
    assert price.cache_write_per_token > price.input_per_token
    assert price.cache_write_1h_per_token is not None
    assert price.cache_write_1h_per_token > price.cache_write_per_token
    # Long-context rates above 200k input tokens.
    [(start, long_context)] = price.tiers
    assert start == 200_000
    assert long_context.input_per_token > price.input_per_token
    assert long_context.output_per_token > price.output_per_token
    assert long_context.tiers == ()


def test_open_model_on_openai_compatible_host(book: PriceBook) -> None:
    price = book.lookup("llama-3.3-70b-versatile", "openai")
    assert price is not None
    assert price.input_per_token > 0


def test_time_of_day_prices_take_the_peak(book: PriceBook) -> None:
    price = book.lookup("deepseek-chat", "deepseek")
    assert price is not None
    info = next(p for p in providers if p.id == "deepseek").find_model("deepseek-chat")
    assert info is not None and isinstance(info.prices, list)
    rates = [c.prices.input_mtok for c in info.prices]
    assert len(rates) > 1
    highest = max(float(rate) for rate in rates if isinstance(rate, Decimal))
    assert price.input_per_token == pytest.approx(highest * MTOK)


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("no-such-model-xyz", "openai"),
        ("no-such-model-xyz", None),
        ("", None),
        ("whisper-1", "openai"),
    ],
)
def test_unknown_model_is_none(book: PriceBook, model: str, provider: str | None) -> None:
    assert book.lookup(model, provider) is None


def test_lookups_are_cached(book: PriceBook) -> None:
    first = book.lookup("gpt-4o-mini", "openai")
    assert first is not None
    assert book.lookup("gpt-4o-mini", "openai") is first


def test_warn_unknown_once_per_model() -> None:
    book = PriceBook(cache_size=2)
    assert book.should_warn_unknown("a")
    assert not book.should_warn_unknown("a")
    assert book.should_warn_unknown("b")
    assert not book.should_warn_unknown("a")
    assert book.should_warn_unknown("c")
    # Bounded memory: the oldest name was forgotten.
    assert book.should_warn_unknown("a")


def test_offline_and_independent_of_genai_prices_snapshot(
    no_network: None, empty_custom_snapshot: None
) -> None:
    book = PriceBook()
    assert book.lookup("gpt-4o", "openai") is not None
    assert book.lookup("claude-sonnet-4-5", "anthropic") is not None
    assert book.lookup("no-such-model-xyz", "openai") is None


def test_cost_arithmetic() -> None:
    assert cost_usd(FLAT, 0, 0) == 0
    assert cost_usd(FLAT, 1_000_000, 0) == pytest.approx(2.0)
    assert cost_usd(FLAT, 1_000, 500) == pytest.approx(1_000 * 2 * MTOK + 500 * 8 * MTOK)
    assert cost_usd(FLAT, 1_000, 500, cached_tokens=4_000, cache_write_tokens=300) == (
        pytest.approx((1_000 * 2 + 500 * 8 + 4_000 * 0.5 + 300 * 2.5) * MTOK)
    )
    # Without a 1-hour price, 1-hour writes cost what other writes cost.
    assert cost_usd(FLAT, 0, 0, cache_write_1h_tokens=100) == pytest.approx(100 * 2.5 * MTOK)
    assert cost_usd(TIERED, 0, 0, cache_write_1h_tokens=100) == pytest.approx(100 * 6 * MTOK)


def test_tier_applies_to_all_tokens_once_total_input_exceeds_start() -> None:
    at_start = cost_usd(TIERED, 150_000, 1_000, cached_tokens=50_000)
    assert at_start == pytest.approx((150_000 * 3 + 1_000 * 15 + 50_000 * 0.3) * MTOK)
    above = cost_usd(TIERED, 150_000, 1_000, cached_tokens=50_000, cache_write_tokens=1)
    assert above == pytest.approx((150_000 * 6 + 1_000 * 22.5 + 50_000 * 0.6 + 7.5) * MTOK)


@pytest.mark.parametrize(
    ("model", "provider"),
    [("gpt-4o", "openai"), ("claude-sonnet-4-5", "anthropic"), ("gemini-2.5-pro", None)],
)
@pytest.mark.parametrize(
    ("uncached", "output", "cached", "written"),
    [(1_234, 567, 0, 0), (10_000, 2_000, 30_000, 5_000), (190_000, 4_000, 20_000, 0)],
)
def test_cost_matches_genai_prices(
    book: PriceBook,
    model: str,
    provider: str | None,
    uncached: int,
    output: int,
    cached: int,
    written: int,
) -> None:
    price = book.lookup(model, provider)
    assert price is not None
    reference = calc_price(
        Usage(
            input_tokens=uncached + cached + written,
            cache_read_tokens=cached,
            cache_write_tokens=written,
            output_tokens=output,
        ),
        model,
        provider_id=provider,
    ).total_price
    ours = cost_usd(price, uncached, output, cached_tokens=cached, cache_write_tokens=written)
    assert ours == pytest.approx(float(reference), rel=1e-9)


def test_max_output_for() -> None:
    # $1 - 100k x $2/M = $0.80 left, at $8/M.
    assert max_output_for(FLAT, 1.0, 100_000) == 100_000
    assert max_output_for(FLAT, 1.0, 500_000) == 0
    assert max_output_for(FLAT, 1.0, 600_000) == 0
    assert max_output_for(FLAT, 0.0, 0) == 0
    assert max_output_for(FLAT, -1.0, 0) == 0
    free = Price(0.0, 0.0, 0.0, 0.0, "free")
    assert max_output_for(free, 0.0, 1_000) == sys.maxsize


def test_max_output_for_uses_the_tier_of_the_prompt() -> None:
    # $10 - 250k x $6/M = $8.50 left, at $22.5/M.
    assert max_output_for(TIERED, 10.0, 250_000) == int(8.5 / (22.5 * MTOK))


@settings(database=None)
@given(
    budget=st.floats(min_value=0, max_value=1_000, allow_nan=False),
    prompt=st.integers(min_value=0, max_value=2_000_000),
    tiered=st.booleans(),
)
def test_max_output_fits_and_one_more_does_not(budget: float, prompt: int, tiered: bool) -> None:
    price = TIERED if tiered else FLAT
    n = max_output_for(price, budget, prompt)
    assert n == 0 or cost_usd(price, prompt, n) <= budget
    # One token of slack for float rounding.
    assert cost_usd(price, prompt, n + 2) > budget
