"""Which headers cross the proxy, in each direction."""

from __future__ import annotations

from collections.abc import Iterable
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


def request_headers(
    incoming: CIMultiDictProxy[str], drop: Iterable[str], adapter: Adapter, api_key: str | None
) -> CIMultiDict[str]:
    dropped = HOP_BY_HOP | {name.lower() for name in drop}
    out: CIMultiDict[str] = CIMultiDict(
        (k, v)
        for k, v in incoming.items()
        if k.lower() not in dropped and not k.lower().startswith("x-tripwire-")
    )
    # Bodies are read to account usage: ask for them uncompressed rather than inflate copies.
    out["Accept-Encoding"] = "identity"
    if api_key:
        adapter.set_credential(out, api_key)
    return out


def response_headers(incoming: Any) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in incoming.items() if k.lower() not in HOP_BY_HOP)
