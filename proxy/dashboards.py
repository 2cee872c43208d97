"""Upload the Grafana dashboards of ``dashboards/`` to a Grafana server.

The JSON files in the repository are the only copy: a dashboard edited there is what every
push uploads, so there is nothing to keep in sync inside the package.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

from grafana_client.api import GrafanaApi
from grafana_client.client import (
    GrafanaClientError,
    GrafanaException,
    GrafanaTimeoutError,
    GrafanaUnauthorizedError,
)

DEFAULT_FOLDER = "Tripwire"
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "dashboards"


class PushError(Exception):
    """Why a push could not finish, in words for the person running it."""


@dataclass(frozen=True, slots=True)
class Pushed:
    title: str
    uid: str
    url: str


def load_dashboards(directory: Path | None = None) -> list[dict[str, Any]]:
    directory = directory or DEFAULT_DIR
    if not directory.is_dir():
        raise PushError(
            f"no dashboards folder at {directory}: pass --dir with the dashboards/ folder "
            "of a Tripwire checkout"
        )
    boards = []
    for path in sorted(directory.glob("*.json")):
        try:
            board = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PushError(f"cannot read dashboard {path}: {exc}") from exc
        if not isinstance(board, dict) or not board.get("uid") or not board.get("title"):
            raise PushError(f"{path} is not a Grafana dashboard with a uid and a title")
        boards.append(board)
    if not boards:
        raise PushError(f"no dashboard JSON files in {directory}")
    return boards


def push(
    grafana_url: str,
    token: str | None,
    folder: str = DEFAULT_FOLDER,
    directory: Path | None = None,
    timeout: float = 10.0,
    report: Callable[[Pushed], None] | None = None,
) -> list[Pushed]:
    """Create ``folder`` unless a folder of that title exists, then import every dashboard
    into it, replacing any dashboard of the same uid, so pushing again changes nothing."""
    boards = load_dashboards(directory)
    base = grafana_url.rstrip("/") + "/"
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PushError(f"--grafana-url must be an http(s) URL, not {grafana_url!r}")
    if token is None and not parts.password:
        raise PushError("give a Grafana service account token with --token or GRAFANA_TOKEN")
    # What is printed never carries credentials given in the URL.
    shown = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
    with _grafana(base, shown.rstrip("/"), token, timeout) as api:
        folder_uid = _folder_uid(api, folder)
        pushed = []
        for board in boards:
            # Grafana matches an existing dashboard by id before uid; ids differ per server.
            body = {
                "dashboard": {**board, "id": None},
                "folderUid": folder_uid,
                "overwrite": True,
                "message": "tripwire dashboards push",
            }
            answer = api.dashboard.update_dashboard(body)
            url = urljoin(shown, str(answer.get("url") or f"d/{board['uid']}"))
            done = Pushed(str(board["title"]), str(board["uid"]), url)
            if report is not None:
                report(done)
            pushed.append(done)
    return pushed


def _folder_uid(api: Any, title: str) -> str:
    for existing in api.folder.get_all_folders():
        if existing.get("title") == title:
            return str(existing["uid"])
    created = api.folder.create_folder(title)
    return str(created["uid"])


@contextmanager
def _grafana(base: str, where: str, token: str | None, timeout: float) -> Iterator[Any]:
    api = GrafanaApi.from_url(base, credential=token, timeout=timeout)
    try:
        yield api
    except GrafanaUnauthorizedError as exc:
        raise PushError(
            f"Grafana at {where} refused the credentials (401 Unauthorized): check the token"
        ) from exc
    except GrafanaTimeoutError as exc:
        raise PushError(f"Grafana at {where} did not answer within {timeout:g}s") from exc
    except GrafanaClientError as exc:
        if exc.status_code == 403:
            raise PushError(
                f"Grafana at {where} denied the request (403 Forbidden): the token needs the "
                "Editor role, or permission to create folders and dashboards"
            ) from exc
        raise PushError(f"Grafana at {where} rejected the request: {exc.message}") from exc
    except GrafanaException as exc:
        raise PushError(f"Grafana at {where} failed: {exc.message}") from exc
    except OSError as exc:  # refused connections, DNS and TLS failures all derive from it
        raise PushError(f"could not reach Grafana at {where}: {_root_cause(exc)}") from exc
    finally:
        api.client.s.close()


def _root_cause(exc: BaseException) -> BaseException:
    """The socket's own error ("Connection refused") rather than the client's retry wrapper."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    return exc
