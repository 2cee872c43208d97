"""The compact price index answers every lookup as a search of the genai-prices dataset itself
would: genai-prices' own model matching (``Provider.find_model``), provider preference,
conditional and tiered prices. The reference below searches the dataset's objects directly."""

from datetime import UTC, datetime

import pytest
from genai_prices.data import providers
from genai_prices.types import (
    ClauseAnd,
    ClauseEquals,
    ClauseOr,
    ClauseStartsWith,
    ModelInfo,
    TimeOfDateConstraint,
)

from proxy.price_build import convert
from proxy.pricing import Price, PriceBook, _max_price


def _reference_price(info: ModelInfo) -> Price | None:
    now = datetime.now(UTC)
    instants = [now]
    if isinstance(info.prices, list):
        for conditional in info.prices:
            constraint = conditional.constraint
            if isinstance(constraint, TimeOfDateConstraint):
                for t in (constraint.start_time, constraint.end_time):
                    instants.append(datetime.combine(now.date(), t).replace(tzinfo=t.tzinfo or UTC))
    found: Price | None = None
    for instant in instants:
        price = convert(info.id, info.get_prices(instant))
        if price is None:
            return None
        found = price if found is None else _max_price(found, price)
    return found


def _reference(model: str, provider: str | None) -> Price | None:
    ref = model.strip().lower()
    if not ref:
        return None
    infos: list[ModelInfo] = []
    named = None
    if provider:
        wanted = provider.strip().lower()
        named = next((p for p in providers if p.id == wanted), None) or next(
            (p for p in providers if p.provider_match and p.provider_match.is_match(wanted)), None
        )
    if named is not None and (info := named.find_model(ref, all_providers=providers)):
        infos = [info]
    else:
        for candidate in providers:
            if candidate.model_match is not None and candidate.model_match.is_match(ref):
                info = candidate.find_model(ref, all_providers=providers)
                if info is not None:
                    infos = [info]
                break
        if not infos:
            infos = [i for p in providers if (i := p.find_model(ref)) is not None]
    found: Price | None = None
    for info in infos:
        price = _reference_price(info)
        if price is not None:
            found = price if found is None else _max_price(found, price)
    return found


def _literals(clause: object) -> list[str]:
    if isinstance(clause, ClauseEquals):
        return [clause.equals]
    if isinstance(clause, ClauseStartsWith):
        return [clause.starts_with + "-latest"]
    if isinstance(clause, ClauseOr):
        return [name for each in clause.or_ for name in _literals(each)]
    if isinstance(clause, ClauseAnd):
        return [name for each in clause.and_ for name in _literals(each)]
    return []


UNKNOWN = ["", "   ", "no-such-model-xyz", "gpt", "claude", "GPT-4O", " gpt-4o ", "o1-mini:free"]
DATED = ["gpt-5.2-20251211", "claude-sonnet-4-20250514", "gpt-4o-20240806", "gpt-4o-20241399"]
HOSTS = [None, "openai", "anthropic", "google", "azure", "aws", "groq", "openrouter", "nope"]


@pytest.fixture(scope="module")
def book() -> PriceBook:
    book = PriceBook(cache_size=1)
    book.load()
    return book


def test_every_model_id_under_its_provider_and_none(book: PriceBook) -> None:
    checked = 0
    for provider in providers:
        for info in provider.models:
            for host in (provider.id, None):
                assert book.lookup(info.id, host) == _reference(info.id, host), (info.id, host)
                checked += 1
    assert checked > 4_000


def test_every_alias_and_unknown_name_under_common_hosts(book: PriceBook) -> None:
    names = {name for p in providers for m in p.models for name in _literals(m.match)}
    for name in sorted(names):
        assert book.lookup(name, None) == _reference(name, None), name
    for name in [*UNKNOWN, *DATED, "llama-3.3-70b-versatile", "deepseek-chat", "gemini-2.5-pro"]:
        for host in HOSTS:
            assert book.lookup(name, host) == _reference(name, host), (name, host)


def test_index_is_reused_from_the_cache_and_rebuilt_when_damaged(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = PriceBook()
    first.load()
    cached = list((tmp_path / "tripwire").iterdir())  # type: ignore[operator]
    assert len(cached) == 1
    cached[0].write_text("[[1, 2")
    again = PriceBook()
    assert again.lookup("gpt-4o", "openai") == first.lookup("gpt-4o", "openai") is not None


def test_without_a_child_process_the_index_is_built_in_process(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr("sys.executable", "/nonexistent/python")
    book = PriceBook()
    assert book.lookup("gpt-4o", "openai") == _reference("gpt-4o", "openai") is not None
