"""Dollar prices per token, from the price dataset bundled with the genai-prices package.

The dataset is read from `genai_prices.data` directly. genai-prices fetches newer prices
only when its `UpdatePrices` is started, which this module never does; and reading the
bundled data rather than genai-prices' current snapshot means that nothing else in the
process can swap prices under a running proxy. Updating prices means upgrading the package.

How the dataset is read:

* Standard prices. Request-dependent variants (OpenAI's priority and flex tiers, batch
  processing) are ignored: priority-tier calls are under-counted, batch and flex calls
  over-counted.
* Prices that change with the time of day (DeepSeek's off-peak hours) take the highest
  price of the day, since a reservation may be settled at another hour. Prices announced
  with a future start date take effect when the model is next looked up after the date
  (lookups are cached, so usually after a restart).
* Tiered prices (Anthropic's and Google's long-context rates) are kept as tiers and applied
  as the providers bill them: once a request's total input, cache reads and writes
  included, exceeds a tier's start, all of its tokens are billed at that tier's rates.
* A missing cache-read or cache-write price means those tokens bill as plain input; a
  missing 1-hour cache-write price falls back to the 5-minute one.
* Per-request, web-search and audio prices are not modelled. Models priced only in such
  units are unknown here (`lookup` returns None); models with no prices at all (free tiers,
  subscriptions) cost nothing.

The dataset is held in a compact form (about 3 MB): ``proxy.price_build`` converts it in a
child process at load (cached per installed dataset), and the lookup here follows
genai-prices' own model matching on it (provider match, model match, fallback providers,
compact dated names), so the server never imports the dataset.
``tests/unit/test_price_index.py`` checks the two agree on every model.

Token convention for `cost_usd`: `prompt_tokens` is the uncached part of the input only.
OpenAI reports cached tokens inside `prompt_tokens`, so its adapter subtracts
`cached_tokens` first; Anthropic reports them apart already.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time
from functools import lru_cache
from typing import Any

from proxy.price import Price, cost_usd, max_output_for, write_1h

__all__ = ["Price", "PriceBook", "cost_usd", "max_output_for"]
# Bumped whenever the index's form or the reading of the dataset changes: names the cache.
INDEX_FORMAT = 1


Clause = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class _Condition:
    """When a model's price applies: always, from a date on (UTC), or daily between two times."""

    kind: str  # "always", "date" or "daily"
    starts: date | None
    daily: tuple[time, time] | None
    price: Price | None


@dataclass(frozen=True, slots=True)
class _Model:
    id: str
    match: Clause
    # A Price, None (not priced per token), or conditions tried last to first.
    prices: Price | tuple[_Condition, ...] | None


@dataclass(frozen=True, slots=True)
class _Provider:
    id: str
    provider_match: Clause | None
    model_match: Clause | None
    fallback: tuple[str, ...]
    models: tuple[_Model, ...]


class PriceBook:
    """Model name to `Price`, from the bundled dataset; build one at start-up.

    The index is read on the first lookup or ``load``: from the cache (~0.03 s), else built in
    a child process (~0.8 s of CPU there). Each distinct (model, provider) pair is searched
    once, misses included; the results are kept in an LRU of `cache_size` entries, so a
    client inventing model names cannot grow memory without bound.
    """

    def __init__(self, cache_size: int = 1024) -> None:
        self._loaded: tuple[_Provider, ...] | None = None
        self._load_lock = threading.Lock()
        self._lookup: Callable[[str, str | None], Price | None] = lru_cache(maxsize=cache_size)(
            self._search
        )
        self._warned: OrderedDict[str, None] = OrderedDict()
        self._warned_cap = cache_size
        self._warned_lock = threading.Lock()

    def load(self) -> None:
        """Build the index now (once; safe from a worker thread while calls wait on it)."""
        _ = self._providers

    def start_load(self) -> Callable[[], None]:
        """Start building the index in its child process; call the result to wait for it.

        Lets a caller load something else meanwhile."""
        if self._loaded is not None:
            return lambda: None
        child = _spawn()

        def finish() -> None:
            with self._load_lock:
                if self._loaded is None:
                    self._loaded = _index(child)
                elif isinstance(child, subprocess.Popen):
                    child.kill()
                    child.wait()

        return finish

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    @property
    def _providers(self) -> tuple[_Provider, ...]:
        if self._loaded is None:
            with self._load_lock:
                if self._loaded is None:
                    self._loaded = _index(_spawn())
        return self._loaded

    def lookup(self, model: str, provider: str | None = None) -> Price | None:
        """The price of `model`, or None when the dataset does not price it per token.

        `provider` is a genai-prices provider id ("openai", "anthropic", ...). When the
        model is not found there, as with OpenAI-compatible hosts serving other models, the
        model is searched across all providers; if several list it, the highest prices are
        taken.
        """
        return self._lookup(model, provider)

    def should_warn_unknown(self, model: str) -> bool:
        """True the first time it is asked about `model`, False afterwards.

        Lets the caller log one warning per unknown model. Remembers as many models as the
        lookup cache holds; a model forgotten since may be warned about again.
        """
        with self._warned_lock:
            if model in self._warned:
                return False
            self._warned[model] = None
            if len(self._warned) > self._warned_cap:
                self._warned.popitem(last=False)
            return True

    def _search(self, model: str, provider: str | None) -> Price | None:
        ref = model.strip().lower()
        if not ref:
            return None
        found: Price | None = None
        for info in self._find(ref, provider):
            price = _price_now(info)
            if price is not None:
                found = price if found is None else _max_price(found, price)
        return found

    def _find(self, ref: str, provider: str | None) -> list[_Model]:
        providers = self._providers
        if provider:
            named = self._provider(provider.strip().lower())
            if named is not None:
                info = _find_model(named, ref, providers)
                if info is not None:
                    return [info]
        for candidate in providers:
            # The provider whose naming scheme the model follows, as genai-prices guesses it.
            if candidate.model_match is not None and _matches(candidate.model_match, ref):
                info = _find_model(candidate, ref, providers)
                if info is not None:
                    return [info]
                break
        return [info for p in providers if (info := _find_model(p, ref, ())) is not None]

    def _provider(self, provider_id: str) -> _Provider | None:
        for p in self._providers:
            if p.id == provider_id:
                return p
        for p in self._providers:
            if p.provider_match is not None and _matches(p.provider_match, provider_id):
                return p
        return None


# -- genai-prices' matching rules, on the compact index ---------------------------------------


def _matches(clause: Clause, text: str) -> bool:
    """Whether `text`, lower-cased, matches; the clause's literals are lower-cased already."""
    kind, arg = clause
    if kind == "=":
        return bool(text == arg)
    if kind == "^":
        return text.startswith(arg)
    if kind == "$":
        return text.endswith(arg)
    if kind == "in":
        return bool(arg in text)
    if kind == "re":
        return arg.search(text) is not None
    if kind == "or":
        return any(_matches(each, text) for each in arg)
    return all(_matches(each, text) for each in arg)


def _find_model(provider: _Provider, ref: str, providers: tuple[_Provider, ...]) -> _Model | None:
    ref = ref.lower()
    model = _match_model(provider, ref, providers)
    if model is not None:
        return model
    # Compact dated names (`gpt-5.2-20251211`) are retried in the dashed form.
    normalized = _normalize_compact_dated_ref(ref)
    if normalized != ref:
        return _match_model(provider, normalized, providers)
    return None


def _match_model(provider: _Provider, ref: str, providers: tuple[_Provider, ...]) -> _Model | None:
    for model in provider.models:
        if _matches(model.match, ref):
            return model
    if provider.fallback and providers:
        for provider_id in provider.fallback:
            other = next((p for p in providers if p.id == provider_id), None)
            if other is not None:
                # One step of fallback only.
                found = _match_model(other, ref, ())
                if found is not None:
                    return found
    return None


_COMPACT_DATE = re.compile(r"(-)(20\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?=-|:|$)")


def _normalize_compact_dated_ref(ref: str) -> str:
    def dashed(match: re.Match[str]) -> str:
        year, month, day = (int(match.group(index)) for index in range(2, 5))
        try:
            date(year, month, day)
        except ValueError:
            return match.group(0)
        return f"{match.group(1)}{year:04d}-{month:02d}-{day:02d}"

    return _COMPACT_DATE.sub(dashed, ref)


def _price_now(model: _Model) -> Price | None:
    """The model's price now; for prices that vary in the day, the highest of the day."""
    if not isinstance(model.prices, tuple):
        return model.prices
    conditions = model.prices
    now = datetime.now(UTC)
    instants = [now]
    for condition in conditions:
        if condition.daily is not None:
            # Both ends: the end is the first instant outside the interval.
            for t in condition.daily:
                instants.append(datetime.combine(now.date(), t).replace(tzinfo=t.tzinfo or UTC))
    found: Price | None = None
    for instant in instants:
        price = _price_at(conditions, instant)
        if price is None:
            return None
        found = price if found is None else _max_price(found, price)
    return found


def _price_at(conditions: tuple[_Condition, ...], instant: datetime) -> Price | None:
    # The last condition that holds wins; when none does, the first.
    for condition in reversed(conditions):
        if _holds(condition, instant):
            return condition.price
    return conditions[0].price


def _holds(condition: _Condition, instant: datetime) -> bool:
    at = instant.astimezone(UTC) if instant.tzinfo is not None else instant.replace(tzinfo=UTC)
    if condition.starts is not None:
        return at.date() >= condition.starts
    if condition.daily is not None:
        now = at.timetz()
        start, end = (_utc_time(t) for t in condition.daily)
        if end < start:
            return now >= start or now < end
        return start <= now < end
    return True


def _utc_time(value: time) -> time:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return datetime.combine(date(1970, 1, 1), value).astimezone(UTC).timetz()


# -- the index's wire form (``proxy.price_build``) -------------------------------------------


def _decode_price(data: tuple[Any, ...] | None) -> Price | None:
    if data is None:
        return None
    tiers = tuple((start, _decode_price(tier)) for start, tier in data[6])
    # Interned: a model's id repeats in each of its prices, tiers and conditions.
    model_id = sys.intern(data[4])
    return Price(data[0], data[1], data[2], data[3], model_id, data[5], tiers)  # type: ignore[arg-type]


def _decode_clause(data: tuple[Any, ...]) -> Clause:
    kind, arg = data
    if kind == "re":
        return (kind, re.compile(arg))
    if kind in ("or", "and"):
        return (kind, tuple(_decode_clause(each) for each in arg))
    return (kind, sys.intern(arg))


def _decode_prices(data: tuple[Any, ...]) -> Price | tuple[_Condition, ...] | None:
    kind, arg = data
    if kind == "flat":
        return _decode_price(arg)
    conditions: list[_Condition] = []
    for what, a, b, price in arg:
        starts = date.fromisoformat(a) if what == "date" else None
        daily = (time.fromisoformat(a), time.fromisoformat(b)) if what == "daily" else None
        conditions.append(_Condition(what, starts, daily, _decode_price(price)))
    return tuple(conditions)


def _decode(data: bytes) -> tuple[_Provider, ...]:
    raw: list[Any] = json.loads(data)
    return tuple(
        _Provider(
            id=pid,
            provider_match=None if provider_match is None else _decode_clause(provider_match),
            model_match=None if model_match is None else _decode_clause(model_match),
            fallback=tuple(fallback),
            models=tuple(
                _Model(sys.intern(mid), _decode_clause(match), _decode_prices(prices))
                for mid, match, prices in models
            ),
        )
        for pid, provider_match, model_match, fallback, models in raw
    )


def _cache_path() -> str:
    """Where the index built from the installed dataset is kept between runs.

    Named for the dataset file's path, size and modification time rather than the package's
    version: reading the version costs ``importlib.metadata``'s imports (~1.4 MB), and a
    reinstall or an edited dataset gets an index of its own.
    """
    key = f"{INDEX_FORMAT}"
    spec = importlib.util.find_spec("genai_prices")  # locates the package, imports nothing
    if spec is not None and spec.origin is not None:
        data = os.path.join(os.path.dirname(spec.origin), "data.py")
        with contextlib.suppress(OSError):
            stat = os.stat(data)
            key = f"{data}|{stat.st_size}|{stat.st_mtime_ns}|{INDEX_FORMAT}"
    digest = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tripwire", f"prices-{digest}.json")


def _cached() -> bytes | None:
    try:
        with open(_cache_path(), "rb") as file:
            return file.read()
    except OSError:
        return None


def _save(data: bytes) -> None:
    # Best effort: a read-only home only means building the index again next start.
    path = _cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.{os.getpid()}"
        with open(temporary, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except OSError:
        pass


class _Cached:
    """Stands for the child when the index was found in the cache."""

    def __init__(self, data: bytes) -> None:
        self.data = data


def _spawn(cache: bool = True) -> subprocess.Popen[bytes] | _Cached | None:
    """The index from the cache, else the child that builds it, or None where no child
    process can be started."""
    cached = _cached() if cache else None
    if cached is not None:
        return _Cached(cached)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        return subprocess.Popen(
            # -P: the child finds its modules where this process found them (PYTHONPATH),
            # not first in the working directory.
            [sys.executable, "-P", "-m", "proxy.price_build"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=env,
        )
    except OSError:
        return None


def _index(child: subprocess.Popen[bytes] | _Cached | None) -> tuple[_Provider, ...]:
    if isinstance(child, _Cached):
        try:
            return _decode(child.data)
        except (ValueError, TypeError, KeyError, IndexError):
            child = _spawn(cache=False)  # a damaged cache file: build the index anew
    return _decode(_collect(child))


def _collect(child: subprocess.Popen[bytes] | _Cached | None) -> bytes:
    if isinstance(child, _Cached):
        return child.data
    if child is not None:
        out, _ = child.communicate()
        if child.returncode == 0:
            _save(out)
            return out
    # No child could build it: build it here, at the cost of the dataset's memory churn.
    from genai_prices.data import providers

    from proxy.price_build import build

    return build(providers)


def _max_price(a: Price, b: Price) -> Price:
    """Field by field, tier by tier, the higher of two prices."""

    def flat(input_tokens: int) -> Price:
        x = a.for_input(input_tokens)
        y = b.for_input(input_tokens)
        return Price(
            input_per_token=max(x.input_per_token, y.input_per_token),
            output_per_token=max(x.output_per_token, y.output_per_token),
            cached_input_per_token=max(x.cached_input_per_token, y.cached_input_per_token),
            cache_write_per_token=max(x.cache_write_per_token, y.cache_write_per_token),
            model_id=a.model_id,
            cache_write_1h_per_token=max(write_1h(x), write_1h(y)),
        )

    starts = sorted({start for start, _ in a.tiers} | {start for start, _ in b.tiers})
    return replace(flat(0), tiers=tuple((start, flat(start + 1)) for start in starts))
