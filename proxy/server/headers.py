"""Which headers cross the proxy, in each direction."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

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
    incoming: CIMultiDictProxy[str], drop: Iterable[str], format_: str, api_key: str | None
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
        if format_ == "anthropic":
            out.pop("Authorization", None)
            out["x-api-key"] = api_key
        else:
            out["Authorization"] = f"Bearer {api_key}"
    return out


def response_headers(incoming: Any) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in incoming.items() if k.lower() not in HOP_BY_HOP)
