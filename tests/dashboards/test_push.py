"""`tripwire dashboards push` against a stand-in for Grafana's HTTP API (see fake_grafana.py:
no Grafana server can run here), through the real grafana-client library."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.cli import main
from tests.dashboards.fake_grafana import FakeGrafana, ServerThread
from tests.dashboards.promql import DASHBOARD_DIR, DASHBOARD_FILES

UIDS = {"tripwire-fleet", "tripwire-runaways", "tripwire-cost", "tripwire-health"}


@pytest.fixture
def grafana() -> Iterator[tuple[FakeGrafana, str]]:
    fake = FakeGrafana()
    server = ServerThread(fake.app())
    try:
        yield fake, server.url
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def no_grafana_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRAFANA_URL", raising=False)
    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)


def push(*args: str) -> int:
    return main(["dashboards", "push", *args])


def test_push_creates_the_folder_and_every_dashboard(
    grafana: tuple[FakeGrafana, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = grafana
    assert push("--grafana-url", url, "--token", fake.token) == 0

    assert [f["title"] for f in fake.folders.values()] == ["Tripwire"]
    folder_uid = next(iter(fake.folders))
    assert set(fake.dashboards) == UIDS
    for request in fake.requests("POST", "/api/dashboards/db"):
        assert request.body["overwrite"] is True
        assert request.body["folderUid"] == folder_uid
        assert request.body["dashboard"]["id"] is None
    # What was uploaded is the file, unchanged but for the id.
    for path in DASHBOARD_FILES:
        on_disk = json.loads(path.read_text(encoding="utf-8"))
        uploaded = fake.dashboards[on_disk["uid"]]["dashboard"]
        assert uploaded == {**on_disk, "id": None}

    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(UIDS)
    for uid in UIDS:
        assert any(f": {url}/d/{uid}/" in line for line in lines), lines
    assert any(line.startswith("Tripwire / Runaway sessions: ") for line in lines)


def test_a_second_push_overwrites_by_uid_and_creates_no_second_folder(
    grafana: tuple[FakeGrafana, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = grafana
    assert push("--grafana-url", url, "--token", fake.token) == 0
    ids = {uid: stored["id"] for uid, stored in fake.dashboards.items()}
    assert push("--grafana-url", url, "--token", fake.token) == 0

    assert len(fake.requests("POST", "/api/folders")) == 1
    assert len(fake.folders) == 1
    assert {uid: stored["id"] for uid, stored in fake.dashboards.items()} == ids
    assert {stored["version"] for stored in fake.dashboards.values()} == {2}
    assert len(capsys.readouterr().out.splitlines()) == 2 * len(UIDS)


def test_an_existing_folder_of_that_title_is_reused(grafana: tuple[FakeGrafana, str]) -> None:
    fake, url = grafana
    fake.folders["ops"] = {"id": 99, "uid": "ops", "title": "Agents", "url": "/dashboards/f/ops/"}
    assert push("--grafana-url", url, "--token", fake.token, "--folder", "Agents") == 0
    assert fake.requests("POST", "/api/folders") == []
    assert {stored["folderUid"] for stored in fake.dashboards.values()} == {"ops"}


def test_a_wrong_token_exits_non_zero_with_a_clear_message(
    grafana: tuple[FakeGrafana, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = grafana
    assert push("--grafana-url", url, "--token", "glsa_wrong") == 1
    err = capsys.readouterr().err
    assert "401 Unauthorized" in err and "token" in err and url in err
    assert "glsa_wrong" not in err
    assert fake.folders == {} and fake.dashboards == {}


def test_an_unreachable_grafana_exits_non_zero_with_a_clear_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once it is closed
    url = f"http://127.0.0.1:{port}"
    assert push("--grafana-url", url, "--token", "t") == 1
    err = capsys.readouterr().err
    assert f"could not reach Grafana at {url}" in err and "refused" in err.lower()


def test_a_token_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert push("--grafana-url", "http://127.0.0.1:3000") == 1
    assert "--token" in capsys.readouterr().err


def test_url_and_token_come_from_the_environment(
    grafana: tuple[FakeGrafana, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, url = grafana
    monkeypatch.setenv("GRAFANA_URL", url)
    monkeypatch.setenv("GRAFANA_TOKEN", fake.token)
    assert push() == 0
    assert set(fake.dashboards) == UIDS


def test_grafana_under_a_sub_path(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeGrafana(prefix="/grafana")
    server = ServerThread(fake.app())
    try:
        assert push("--grafana-url", server.url + "/grafana/", "--token", fake.token) == 0
    finally:
        server.stop()
    assert set(fake.dashboards) == UIDS
    out = capsys.readouterr().out
    assert f"{server.url}/grafana/d/tripwire-fleet/" in out
    assert "/grafana/grafana/" not in out


def test_dir_points_elsewhere(
    grafana: tuple[FakeGrafana, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = grafana
    shutil.copy(DASHBOARD_DIR / "tripwire-cost.json", tmp_path)
    assert push("--grafana-url", url, "--token", fake.token, "--dir", str(tmp_path)) == 0
    assert set(fake.dashboards) == {"tripwire-cost"}

    empty = tmp_path / "empty"
    empty.mkdir()
    assert push("--grafana-url", url, "--token", fake.token, "--dir", str(empty)) == 1
    assert "no dashboard JSON files" in capsys.readouterr().err
