"""The one canonical form of every id a client chooses: task, agent and tenant, from headers,
the URL, ``traceparent``, other gateways' session headers and token claims alike.

A canonical id is 1 to 128 characters of ``A-Z a-z 0-9 . _ ~ : @ + = -`` and ``%``: anything
else a client sends is percent-escaped (``%`` itself included, so the form is one-to-one), which
keeps ids safe as they stand in URLs, Redis key names, Prometheus exemplars and log lines. A
``/`` never survives: ``<tenant>/<task>`` is how Tripwire keys a tenant's tasks, and only
Tripwire adds that slash, so no client-chosen id can reach into a tenant's namespace. An id
still too long after escaping is refused, not cut, so two long ids never merge into one task.

Model names are bounded here too: they reach the price lookup, a metric label and every call's
log line.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from proxy.errors import BadRequest

MAX_ID_LENGTH = 128
# What passes unescaped: RFC 3986's unreserved characters and a few common in ids.
ID_SAFE = ":@+="
ID_PATTERN = r"^[A-Za-z0-9._~:@+=%-]{1,128}$"
# A tenant's name: no escapes, no slash; as in a token's tenant claim and the admin API.
MAX_TENANT_LENGTH = 64
TENANT_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"

MAX_MODEL_LENGTH = 256
# Printable ASCII without spaces: every provider's and local server's model names fit
# (``meta-llama/Llama-3.1-8B-Instruct``, ``llama3.1:8b``, ``claude-3-5-sonnet@20240620``).
_MODEL = re.compile(r"^[!-~]{1,256}$")
# An id that escaping leaves as it is: most ids are, and matching is ten times cheaper.
_CANONICAL = re.compile(r"[A-Za-z0-9._~:@+=-]{1,128}")


def canonical_id(value: str, what: str = "id") -> str:
    """``value`` in canonical form; ``BadRequest`` names ``what`` (e.g. "the task id in
    X-Task-Id") when it is empty or too long once escaped."""
    if _CANONICAL.fullmatch(value):
        return value
    value = value.strip()
    if len(value) > MAX_ID_LENGTH * 12:
        # Checked before escaping, so a megabyte header costs nothing to refuse.
        raise BadRequest(f"{what} is {len(value)} characters long; at most {MAX_ID_LENGTH}")
    # surrogatepass: a header byte that is not UTF-8 reaches here as a lone surrogate.
    escaped = quote(value, safe=ID_SAFE, errors="surrogatepass")
    if not escaped:
        raise BadRequest(f"{what} is empty")
    if len(escaped) > MAX_ID_LENGTH:
        raise BadRequest(
            f"{what} is {len(escaped)} characters long once escaped; at most {MAX_ID_LENGTH} "
            "(letters, digits and . _ ~ : @ + = - count one, anything else three per byte)"
        )
    return escaped


def check_model(value: str) -> str:
    """A model name fit for the price lookup, a label and a log line, or ``BadRequest``."""
    if _MODEL.match(value):
        return value
    if len(value) > MAX_MODEL_LENGTH:
        raise BadRequest(
            f"the model name is {len(value)} characters long; at most {MAX_MODEL_LENGTH}"
        )
    raise BadRequest(
        "the model name must be printable ASCII without spaces "
        f"(1 to {MAX_MODEL_LENGTH} characters)"
    )
