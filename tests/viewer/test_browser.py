"""The viewer in a real browser: headless Chromium (Debian's ``chromium``; ``.ci/run`` installs it) loads
the page, its WebGL runs on SwiftShader, the server renders for the browser's camera, and the picture
shows up on the page."""

import shutil
import threading
import time

import numpy as np
import pytest

from ngp.viewer import ImageView, Viewer

from .client import free_port
from .test_viewer import _Constant

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install -y chromium (.ci/run does)"),
]


def test_the_page_draws_the_rendered_scene(tmp_path):
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright").sync_playwright
    # the image plane of a model whose colour is its position: red grows to the right, green downwards
    view = ImageView(_Constant(), aspect=1.0)
    viewer = Viewer(view, port=free_port(), log=lambda _: None)
    stop = threading.Event()
    thread = threading.Thread(target=viewer.serve_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
                "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox"])
            page = browser.new_page(viewport={"width": 640, "height": 480})
            page.goto(viewer.url)
            deadline = time.monotonic() + 90
            while viewer.frames_sent < 2 and time.monotonic() < deadline:
                page.wait_for_timeout(250)
            assert viewer.frames_sent >= 2, "the browser's camera never reached the server"
            # A frame sent is not yet a frame drawn: SwiftShader on a busy CI machine has taken more than
            # 1.5 s to decode and draw one, so look at the page until the picture is there (or time is up).
            shot = tmp_path / "page.png"
            while True:
                page.screenshot(path=str(shot))
                reddish, greenish = _position_colours(shot)
                if (reddish > 200 and greenish > 200) or time.monotonic() > deadline:
                    break
                page.wait_for_timeout(500)
            browser.close()
    finally:
        stop.set()
        thread.join(timeout=60)
        viewer.close()
    # before a frame is drawn the page already has ~70 reddish pixels; the drawn picture has thousands
    assert reddish > 200 and greenish > 200, (
        f"the rendered image is not on the page ({reddish} reddish, {greenish} greenish pixels; {shot})")


def _position_colours(path) -> tuple[int, int]:
    """Pixels of the picture's top-right (red) and bottom-left (green) corners in a screenshot."""
    from PIL import Image

    shot = np.asarray(Image.open(path).convert("RGB")).astype(int)
    r, g, b = shot[..., 0], shot[..., 1], shot[..., 2]
    reddish = (r > 180) & (g < 80) & (abs(b - 64) < 40)
    greenish = (g > 180) & (r < 80) & (abs(b - 64) < 40)
    return int(reddish.sum()), int(greenish.sum())
