"""The browser page, in a real headless Chromium (Debian's `chromium`, driven by Playwright), against a live
`vdp serve` started from the command line on loopback: upload a real clip, press Predict, see the result,
download it; and see a refusal explained. A screenshot is saved when anything fails."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support.exports import unet_export
from support.serving import free_port, wait_ready
from support.videos import moving_square_frames, write_video

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.cluster,  # `vdp serve` as a user runs it: a subprocess with its own Ray
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run does)"),
]
# Flags for a closed network and a root user (see the machine notes): no sandbox, no background traffic.
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    export = unet_export(tmp_path_factory.mktemp("browser"))
    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": "", "VDP_BROWSER_KEY": "k3y"}
    command = [
        sys.executable,
        "-m",
        "vdp_ray.cli",
        "serve",
        "--checkpoint",
        str(export),
        "--port",
        str(port),
        "--cpus-per-replica",
        "0.5",
        "--api-key-env",
        "VDP_BROWSER_KEY",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, seconds=240)
    except TimeoutError:
        proc.kill()
        raise AssertionError(proc.communicate()[0][-4000:]) from None
    yield url, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_vdp_serve_page_predicts_an_uploaded_clip_in_chromium(live_server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, proc = live_server
    clip = write_video(tmp_path / "clip.mp4", moving_square_frames(8, 24, 32))
    junk = tmp_path / "notes.mp4"
    junk.write_bytes(b"these are not video frames")
    shot = Path(os.environ.get("VDP_SCREENSHOTS", tmp_path)) / "browser-failure.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(accept_downloads=True)
        try:
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('missing')")
            page.fill("#apikey", "k3y")
            page.dispatch_event("#apikey", "change")  # the model line is fetched again, with the key
            page.wait_for_function("document.getElementById('model').textContent.includes('unet3d')")
            # a refusal is shown, not swallowed: no clip chosen, then a file that is not a video
            page.click("#submit")
            assert "Choose a clip" in page.inner_text("#status")
            page.set_input_files("#file", str(junk))
            page.click("#submit")
            page.wait_for_function("document.getElementById('status').className === 'error'", timeout=60_000)
            assert "415" in page.inner_text("#status") and "not a readable video" in page.inner_text("#status")

            page.set_input_files("#file", str(clip))
            page.fill("#context", "2")
            page.fill("#future", "4")
            page.fill("#steps", "3")
            page.check("#resize")
            page.click("#submit")
            page.wait_for_function(
                "() => { const i = document.getElementById('result'); return i.style.display === 'block' && "
                "i.complete && i.naturalWidth > 0 }",
                timeout=120_000,
            )
            assert "Done in" in page.inner_text("#status")
            width = page.eval_on_selector("#result", "i => i.naturalWidth")
            assert width >= 2 * 128  # given + predicted beside the true future, enlarged for viewing
            with page.expect_download() as info:
                page.click("#download")
            saved = tmp_path / "download.gif"
            info.value.save_as(saved)
            assert saved.read_bytes()[:6] == b"GIF89a"
            assert "16×16" in page.inner_text("#model")
        except Exception:
            page.screenshot(path=str(shot), full_page=True)
            raise
        finally:
            browser.close()
    assert httpx.get(url + "/healthz", timeout=10).status_code == 200
    assert proc.poll() is None  # still serving
