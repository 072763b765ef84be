"""hirune serve's page in a real browser: uvicorn on a free port in a thread, Debian's
headless chromium driven by Playwright.  Load the page, choose the run and a sampler, press
Generate, wait for the pictures to load; a bad value shows its message; upload an image and
edit it.  Screenshots go to the test's tmp folder (and to $HIRUNE_TEST_ARTIFACTS if set).

Skipped, saying why, only where chromium or playwright is missing (scripts/setup.sh installs
both where it can)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="hirune serve needs fastapi (pip install 'hirune[serve]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (the dev extra)")
CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip("the browser test needs Debian's chromium (scripts/setup.sh installs it with apt-get as root)",
                allow_module_level=True)

from PIL import Image  # noqa: E402

from hirune.serve.app import make_app  # noqa: E402
from hirune.serve.server import bind, make_server, url  # noqa: E402

LOADED = "(id) => document.getElementById(id).complete && document.getElementById(id).naturalWidth > 0"


@pytest.fixture(scope="module")
def address(cond_root, tmp_path_factory):
    """The page's URL: uvicorn serving the runs on a free loopback port, in a thread."""
    sock = bind("127.0.0.1", 0)
    server = make_server(make_app(cond_root, results=tmp_path_factory.mktemp("results")), sock)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started and time.monotonic() < end:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    yield url(sock)
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def page(address):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(30_000)
        page.goto(address)
        yield page
        browser.close()


def _screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("HIRUNE_TEST_ARTIFACTS"):
        target = Path(os.environ["HIRUNE_TEST_ARTIFACTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / name)
    return path


def test_generate_shows_the_samples_trajectory_and_x0_estimates(page, tmp_path):
    page.wait_for_function("document.getElementById('sampler').options.length > 0")
    page.select_option("#run", "cond")
    page.wait_for_function("document.getElementById('sampler').options.length > 0")
    page.select_option("#sampler", "dpmpp_2m")
    page.fill("#steps", "4")
    page.fill("#n", "9")
    page.fill("#label", "3")
    page.fill("#guidance", "2")
    page.click("#generate")
    page.wait_for_function(f"({LOADED})('x0') || document.getElementById('sample-error').textContent")
    assert page.inner_text("#sample-error") == ""
    for picture in ("samples", "trajectory", "x0"):
        page.wait_for_function(LOADED, arg=picture)
    assert page.eval_on_selector("#progress", "bar => bar.value") == 1
    assert "done" in page.inner_text("#status") and page.inner_text("#sample-error") == ""
    assert page.get_attribute("#samples", "src").endswith("/samples.png")
    page.wait_for_function("document.getElementById('chart-info').textContent.includes('4 logged steps')")
    assert _screenshot(page, tmp_path, "serve-generate.png").stat().st_size > 0


def test_a_bad_value_shows_its_message(page, tmp_path):
    page.fill("#steps", "0")
    page.click("#generate")
    page.wait_for_function("document.getElementById('sample-error').textContent.length > 0")
    assert page.inner_text("#sample-error") == "steps=0 is not valid; valid: an integer in 1..1000"
    _screenshot(page, tmp_path, "serve-bad-value.png")


def test_an_uploaded_image_is_edited(page, tmp_path):
    digit = tmp_path / "digit.png"
    Image.fromarray((np.indices((8, 8)).sum(0) * 16).astype(np.uint8)).save(digit)
    page.set_input_files("#image", str(digit))
    page.fill("#steps", "4")
    page.fill("#source", "1")
    page.fill("#target", "7")
    page.click("#edit")
    page.wait_for_function(f"({LOADED})('edited') || document.getElementById('edit-error').textContent")
    assert page.inner_text("#edit-error") == "" and "reconstruction PSNR" in page.inner_text("#status")
    _screenshot(page, tmp_path, "serve-edit.png")


def test_the_loss_curve_follows_a_run_that_trains(page, cond_root):
    """The page polls the metrics every few seconds: a step logged now shows up without a reload."""
    page.wait_for_function("document.getElementById('chart-info').textContent.includes('4 logged steps')")
    with open(cond_root / "cond" / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 0.125}\n')
    page.wait_for_function("document.getElementById('chart-info').textContent.includes('5 logged steps')",
                           timeout=10_000)
    assert "last loss 0.1250" in page.text_content("#chart-info")
