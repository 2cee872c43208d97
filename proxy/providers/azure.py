"""Azure OpenAI: the OpenAI formats on a resource's deployment paths
(``/openai/deployments/{deployment}/chat/completions?api-version=...``) and its v1 API
(``/openai/v1/chat/completions``, ``/openai/v1/responses``), keyed by the ``api-key`` header.

The bodies, streams and errors are OpenAI's, read by the OpenAI adapter this one extends; what
differs is where the model is named (the deployment in the path, else the body's ``model``,
which on Azure is a deployment name too: an upstream's ``deployments`` map turns it into the
model for prices and labels) and where the key goes.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import unquote

from proxy.providers.base import CallInfo
from proxy.providers.openai import OpenAIAdapter

_DEPLOYMENT = re.compile(r"/openai/deployments/([^/]+)/")


class AzureOpenAIAdapter(OpenAIAdapter):
    name = "azure"
    # The kinds are OpenAI's ("chat", "responses"), owned by the OpenAI adapter, which reads
    # Azure's bodies alike wherever a kind alone picks the adapter (envelopes).
    kinds: frozenset[str] = frozenset()
    # Every resource has a host of its own: configure the upstream's base_url.
    default_base_url = "https://YOUR-RESOURCE.openai.azure.com"
    default_routes = ("/openai/",)
    price_provider = "azure"

    def set_credential(self, headers: MutableMapping[str, str], api_key: str) -> None:
        headers.pop("Authorization", None)  # an Entra ID token, when the client sent one
        headers["api-key"] = api_key

    def parse_request(self, path: str, body: dict[str, Any]) -> CallInfo:
        info = super().parse_request(path, body)
        found = _DEPLOYMENT.search(path)
        if found:
            info.model = unquote(found.group(1))
        return info
