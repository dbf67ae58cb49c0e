"""The status page in a real browser (Debian's chromium, driven by Playwright) against a real
queen, hive and worker on the real model: it asks for a credential first (the operator logs in
with the cluster token), then loads, shows the live worker, and shows a worker spawned later
and a job submitted later without a reload (the page's SSE stream brings them).

The screenshot is kept under pytest's tmp dir and copied to $RBEE_TEST_ARTIFACTS (default
/tmp/rbee-artifacts) as status-page.png. No browser is downloaded: Playwright launches
/usr/bin/chromium (`make system-deps` installs it), and fails when it is missing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from tests.fixtures.cluster import LocalCluster, applied_cluster

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
LAPTOP = {"width": 1366, "height": 768}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, gguf: Path) -> Iterator[LocalCluster]:
    with applied_cluster(tmp_path_factory.mktemp("home"), gguf) as the_cluster:
        yield the_cluster


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()


def _keep(screenshot: Path) -> Path:
    """Copy a screenshot to the artefacts folder, where CI picks it up."""
    folder = Path(os.environ.get("RBEE_TEST_ARTIFACTS") or "/tmp/rbee-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    kept = folder / screenshot.name
    shutil.copyfile(screenshot, kept)
    print(f"status page screenshot: {kept}")
    return kept


def test_the_page_shows_the_live_worker_and_one_spawned_later_without_a_reload(
    cluster: LocalCluster, browser: Browser, tmp_path: Path
) -> None:
    page = browser.new_page(viewport=LAPTOP)
    page.goto(f"{cluster.queen_url}/")
    expect(page).to_have_title("rbee status: log in")  # no open page, on loopback too
    page.fill("#key", cluster.token)
    page.click("button[type=submit]")
    expect(page).to_have_title("rbee status")
    workers, hives = page.locator("#workers"), page.locator("#hives")
    expect(workers).to_contain_text("local.gemma3-270m.0")
    expect(workers).to_contain_text("0/2")  # slots busy/total
    expect(hives).to_contain_text("online")
    expect(page.locator("#link")).to_contain_text("live")
    page.evaluate("window.loadedOnce = true")  # gone if the page were loaded again

    cluster.write(replicas=2)
    cluster.rbee("apply", "--auto-approve")
    expect(workers).to_contain_text("local.gemma3-270m.1", timeout=20_000)
    assert page.evaluate("window.loadedOnce") is True
    expect(page.locator("#queues")).to_contain_text("gemma3-270m")
    job = httpx.post(
        f"{cluster.queen_url}/v1/jobs",
        json={"model": "gemma3-270m", "prompt": "Hi", "max_tokens": 4},
        headers=cluster.headers,
        timeout=10,
    )
    assert job.status_code < 300, job.text
    expect(page.locator("#jobs")).to_contain_text(job.json()["job_id"])
    # It reads on a laptop's screen: nothing runs off its side.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    screenshot = tmp_path / "status-page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert _keep(screenshot).stat().st_size > 10_000
