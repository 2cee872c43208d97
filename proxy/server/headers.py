"""Which headers cross the proxy, in each direction."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDict, CIMultiDictProxy

if TYPE_CHECKING:
    from proxy.providers.base import Adapter

# RFC 9110 hop-by-hop headers, plus those the proxy must recompute for the bytes it sends.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


@lru_cache(maxsize=64)
def _dropped(drop: frozenset[str]) -> frozenset[str]:
    return HOP_BY_HOP | {name.lower() for name in drop}


def request_headers(
    incoming: CIMultiDictProxy[str], drop: frozenset[str], adapter: Adapter, api_key: str | None
) -> CIMultiDict[str]:
    dropped = _dropped(drop)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if lower not in dropped and not lower.startswith("x-tripwire-"):
            out.add(name, value)
    # Bodies are read to account usage: ask for them uncompressed rather than inflate copies.
    out["Accept-Encoding"] = "identity"
    if api_key:
        adapter.set_credential(out, api_key)
    return out


def response_headers(incoming: Any) -> CIMultiDict[str]:
    return CIMultiDict([(k, v) for k, v in incoming.items() if k.lower() not in HOP_BY_HOP])
