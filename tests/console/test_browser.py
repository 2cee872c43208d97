"""The console in a real browser, as a user meets it: a fresh ``tripwire serve --mock``, the
quickstart's looping agent, the task killed on the page with its reason, refused calls and
the estimate of money saved, resumed from the page with a raised budget; and a viewer's
token that shows everything but no action."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from playwright.sync_api import expect

from proxy.auth import mint
from tests.console.conftest import ROOT
from tests.processes import stop

SECRET = "tripwire-console-tests-hs256-secret-0123"
QUESTION = "Is the plan done?"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local_env(home: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPWIRE_")}
    return {**env, "HOME": str(home), "TRIPWIRE_SERVER__PORT": str(port)}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """``tripwire serve --mock`` as the quickstart starts it: the shipped policy, no auth."""
    port = free_port()
    env = local_env(tmp_path / "home", port)
    log = tmp_path / "serve.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--mock"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    else:
        process.kill()
        process.wait()
        pytest.fail("tripwire serve did not start: " + log.read_text())
    try:
        yield f"http://127.0.0.1:{port}", env
    finally:
        stop(process)


def ask(client: openai.OpenAI, task: str, content: str = QUESTION) -> str:
    """One call of the quickstart's agent: its answer, or "refused"."""
    try:
        reply = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": content}],
            extra_headers={"X-Task-Id": task},
        )
    except openai.PermissionDeniedError:
        return "refused"
    return reply.choices[0].message.content or ""


def row(page: Any, task: str) -> Any:
    return page.locator(f'#tasks tbody tr[data-task="{task}"]')


def test_a_runaway_is_killed_on_the_page_and_resumed_from_it(
    page: Any, served: tuple[str, dict[str, str]], shots: Path
) -> None:
    url, env = served
    link = subprocess.run(
        [sys.executable, "-m", "proxy", "console", "--url", url],
        capture_output=True,
        text=True,
        env=env,
        timeout=20,
        check=True,
    ).stdout.strip()
    assert re.fullmatch(re.escape(url) + r"/tripwire/ui/#token=twl_[\w-]+", link), link

    page.goto(link)
    expect(page.locator("#tasks")).to_be_visible()
    assert "token" not in page.url  # taken out of the address bar and the history
    expect(page.locator("#who")).to_contain_text("local-admin")

    client = openai.OpenAI(base_url=url + "/v1", api_key="sk-anything", max_retries=0)
    assert ask(client, "quickstart") == f"Answer to: {QUESTION}"
    expect(row(page, "quickstart")).to_be_visible(timeout=5000)
    expect(row(page, "quickstart").locator(".badge")).to_have_text("running")

    answers = [ask(client, "quickstart") for _ in range(4)]
    assert answers[-2:] == ["refused", "refused"], answers
    killed = row(page, "quickstart")
    expect(killed.locator(".badge")).to_have_text("killed", timeout=5000)
    expect(killed.locator(".trip-reason")).to_have_text("repeat_output")
    expect(killed.locator(".refused")).to_have_text("2")
    expect(page.locator("#charts svg")).to_have_count(4)
    expect(page.locator("#charts")).to_contain_text("Trips by reason")
    page.screenshot(path=str(shots / "console-tasks.png"))

    page.click('#tasks a.task-id:text-is("quickstart")')
    expect(page.locator("#task-state")).to_have_text("killed")
    expect(page.locator("#trip")).to_contain_text("repeated the same output 3 times")
    expect(page.locator("#trip .saved")).to_contain_text("2 calls refused after the kill")
    expect(page.locator("#trip .saved")).to_contain_text("(an estimate)")
    expect(page.locator(".previews li.matched").first).to_contain_text(QUESTION)
    expect(page.locator("svg.handoffs circle")).to_have_count(5)
    page.screenshot(path=str(shots / "console-task.png"), full_page=True)

    page.click("#nav-trips")
    stopped = page.locator('#stopped tr[data-task="quickstart"]')
    expect(stopped).to_contain_text("repeat_output")
    expect(page.locator("#saved-total")).to_contain_text("An estimate, not a measurement")
    page.go_back()

    page.fill("#resume-max-tokens", "5000")
    page.fill("#resume-note", "approved on the console")
    page.click("#resume")
    expect(page.locator("#task-state")).to_have_text("running", timeout=5000)
    expect(page.locator("#audit")).to_contain_text("resume by local-admin: approved on the console")
    assert ask(client, "quickstart", "And the next step?") == "Answer to: And the next step?"


@pytest.fixture
def keyed_proxy(make_proxy: Any) -> Any:
    """A proxy whose admin API takes JWTs (auth stays off for agent traffic)."""
    return make_proxy(
        auth={"hs256_secret": SECRET},
        policy={"defaults": {"max_calls": 2}},
    )


def sign_in(page: Any, base_url: str, token: str) -> None:
    page.goto(base_url + "/tripwire/ui/")
    expect(page.locator("#signin")).to_be_visible()
    page.fill("#token-input", token)
    page.click("#token-save")
    expect(page.locator("#tasks")).to_be_visible()


def test_a_viewer_sees_the_task_but_no_action_and_markup_stays_text(
    page: Any, keyed_proxy: Any
) -> None:
    client = openai.OpenAI(base_url=keyed_proxy.openai_url, api_key="sk-x", max_retries=0)
    markup = '<img src=x id=injected onerror="window.pwned=1">'
    assert ask(client, "viewer-check", markup).startswith("Answer to:")
    assert ask(client, "viewer-check", "two") == "Answer to: two"
    assert ask(client, "viewer-check", "three") == "refused"  # max_calls 2

    viewer = mint(SECRET, {"role": "viewer", "sub": "vic"}, 600)
    sign_in(page, keyed_proxy.base_url, viewer)
    expect(page.locator("#who")).to_contain_text("viewer (read-only)")
    expect(row(page, "viewer-check").locator(".badge")).to_have_text("killed")

    page.click('#tasks a.task-id:text-is("viewer-check")')
    expect(page.locator("#task-state")).to_have_text("killed")
    expect(page.locator("#trip")).to_contain_text("max_calls")
    expect(page.locator(".previews")).to_contain_text(markup)  # shown as text
    assert page.locator("#injected").count() == 0
    assert page.evaluate("window.pwned") is None
    assert page.locator("#actions").count() == 0
    assert page.locator("button#kill, button#resume, button#extend").count() == 0

    refused = httpx.post(
        f"{keyed_proxy.base_url}/tripwire/v1/tasks/viewer-check/resume",
        json={},
        headers={"Authorization": f"Bearer {viewer}"},
    )
    assert refused.status_code == 403

    # The same page with an admin's token offers the actions.
    page.click("#sign-out")
    admin = mint(SECRET, {"role": "admin", "sub": "dana"}, 600)
    sign_in(page, keyed_proxy.base_url, admin)
    page.click('#tasks a.task-id:text-is("viewer-check")')
    expect(page.locator("button#resume")).to_be_visible()
    page.fill("#resume-max-tokens", "")
    page.click("#resume")
    expect(page.locator("#task-state")).not_to_have_text("killed", timeout=5000)
    expect(page.locator("#audit")).to_contain_text("resume by dana")
