"""The web demo (``detris serve``): the handler, a live server under a burst, and a real browser.

Three levels:

* the Gradio handler called directly, with good and awkward inputs;
* ``detris serve`` in a subprocess on a free loopback port, driven through ``gradio_client``: errors
  reach the client, oversized uploads are refused, a burst of 50 concurrent requests against a queue
  of 4 is answered or cleanly rejected, and the server's RSS comes back near its warmed-up baseline;
* headless Chromium through Selenium: upload, type, click, wait for the overlay, screenshot.
  ``DETRIS_UPDATE_SCREENSHOT=1`` also writes the screenshot to ``docs/demo_screenshot.png``.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

# Before gradio / gradio_client are imported: no telemetry threads calling out of a closed network.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio", reason='the web demo needs gradio (pip install "detris[demo]")')

from detris.app import DemoLimits, build_app, make_handler, segment_upload
from detris.cli import main as cli_main
from detris.data.synthetic import SyntheticScenes
from detris.predictor import Predictor
from detris.visualize import render_overlay
from model_fixtures import save_random_tiny

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

#: The handler's limits in the unit tests: small, so that "too big" inputs are cheap to make.
LIMITS = DemoLimits(max_upload_mb=1.0, max_pixels=512 * 512, max_expressions=8, max_text_chars=4000)
#: The live server's bounds.
QUEUE_SIZE = 4
BURST = 50
UPLOAD_MB = 1.0


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_random_tiny(tmp_path_factory.mktemp("model") / "detris-tiny-random", image_size=112)


@pytest.fixture(scope="module")
def predictor(model_dir) -> Predictor:
    return Predictor.from_pretrained(model_dir, device="cpu")


@pytest.fixture(scope="module")
def handler(predictor) -> Callable:
    return make_handler(predictor, LIMITS)


def _scene(height: int = 240, width: int = 320, seed: int = 3):
    """A synthetic scene (coloured shapes) and two of its referring expressions."""
    scene = SyntheticScenes(1, seed=seed, image_size=(height, width))[0]
    texts = [obj.expressions[0] for obj in scene.objects][:2]
    return scene.image, texts


@pytest.fixture(scope="module")
def good_image(tmp_path_factory) -> Path:
    rgb, _ = _scene()
    path = tmp_path_factory.mktemp("images") / "scene.png"
    Image.fromarray(rgb).save(path)
    return path


def _assert_good_request_works(handler: Callable, image: Path) -> None:
    """The request every awkward one is followed by: one overlay of the image's size."""
    overlays, status = handler(str(image), "the red shape", 0.35)
    assert len(overlays) == 1 and overlays[0][0].size == Image.open(image).size
    assert status.startswith("1 expression(s)")


# ------------------------------------------------------------------------ the handler, directly


def test_two_expressions_give_two_overlays_of_the_image_size(handler, predictor, tmp_path):
    rgb, texts = _scene(height=150, width=200)  # not square: width and height must not be swapped
    path = tmp_path / "scene.png"
    Image.fromarray(rgb).save(path)

    overlays, status = handler(str(path), f"{texts[0]}\n\n  {texts[1]}  \n", 0.35)

    assert [caption for _, caption in overlays] == texts  # blank lines skipped, spaces trimmed
    expected = predictor.predict(rgb, texts)
    for (overlay, _), pred in zip(overlays, expected):
        assert overlay.size == (200, 150)
        # The page shows exactly the Predictor's mask, rendered by the library's overlay function.
        np.testing.assert_array_equal(np.asarray(overlay), np.asarray(render_overlay(rgb, pred.mask, pred.text)))
    assert status.startswith("2 expression(s) on a 200x150 image")
    assert texts[0] in status and texts[1] in status


def _png_with_header_size(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims ``width x height``: a decompression bomb in a few bytes."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


def _save(array: np.ndarray, path: Path, **kwargs) -> Path:
    Image.fromarray(array).save(path, **kwargs)
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated_png(path: Path) -> Path:
    rgb, _ = _scene()
    Image.fromarray(rgb).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _rotated_jpeg(path: Path) -> Path:
    """A 60 x 40 JPEG with EXIF orientation 6: displayed as 40 x 60."""
    rgb, _ = _scene(height=40 * 4, width=60 * 4)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).resize((60, 40)).save(path, exif=exif, quality=90)
    return path


_RNG = np.random.default_rng(0)
_LONG = " ".join(["the", "big", "red", "ball", "next", "to", "a", "small", "blue", "box"] * 50)  # 500 words

# (id, make the upload (tmp_path -> path or None), text, expected: overlay sizes (W, H) or an error regex)
AWKWARD = [
    ("truncated-png", lambda d: _truncated_png(d / "cut.png"), "the shape", r"cannot be used.*(truncated|corrupt)"),
    ("zero-bytes", lambda d: _write(d / "empty.png", b""), "the shape", r"empty \(0 bytes\)"),
    ("not-an-image", lambda d: _write(d / "notes.png", b"just text\n"), "the shape", r"not an image"),
    ("no-image", lambda d: None, "the shape", r"upload an image"),
    ("upload-gone", lambda d: d / "vanished.png", "the shape", r"upload it again"),
    ("empty-text", lambda d: _save(_scene()[0], d / "a.png"), "", r"type a referring expression"),
    ("whitespace-text", lambda d: _save(_scene()[0], d / "a.png"), " \n\t \n ", r"type a referring expression"),
    ("too-many-expressions", lambda d: _save(_scene()[0], d / "a.png"),
     "\n".join(f"shape {k}" for k in range(9)), r"9 expressions given; at most 8"),
    ("too-much-text", lambda d: _save(_scene()[0], d / "a.png"), "x" * 4001, r"at most 4000"),
    ("too-many-pixels", lambda d: _save(np.zeros((600, 600, 3), np.uint8), d / "wide.png"), "the shape",
     r"600x600 pixels.*at most 0\.3 MP"),
    ("header-bomb", lambda d: _png_with_header_size(d / "bomb.png", 8000, 8000), "the shape",
     r"8000x8000 pixels \(64\.0 MP\)"),
    ("header-bomb-over-pil-limit", lambda d: _png_with_header_size(d / "bomb.png", 30000, 30000), "the shape",
     r"over \d+ MP; at most 0\.3 MP"),
    ("too-many-bytes", lambda d: _save(_RNG.integers(0, 256, (600, 640, 3), dtype=np.uint8), d / "noise.bmp"),
     "the shape", r"MB; at most 1 MB"),
    ("500-words", lambda d: _save(_scene()[0], d / "a.png"), _LONG, [(320, 240)]),
    ("emoji-and-non-latin", lambda d: _save(_scene()[0], d / "a.png"),
     "🐶 the dog 🐕\n左边的红色圆圈\nкрасный круг слева\nالدائرة الحمراء\n🔴", [(320, 240)] * 5),
    ("1x1", lambda d: _save(np.full((1, 1, 3), 200, np.uint8), d / "dot.png"), "the dot", [(1, 1)]),
    ("rgba", lambda d: _save(_RNG.integers(0, 256, (30, 50, 4), dtype=np.uint8), d / "rgba.png"), "the shape",
     [(50, 30)]),
    ("palette", lambda d: _save(_scene()[0], d / "p.gif"), "the shape", [(320, 240)]),
    ("16-bit", lambda d: _save((_RNG.integers(0, 65536, (40, 70))).astype(np.uint16), d / "deep.png"),
     "the shape", [(70, 40)]),
    ("jpeg-named-png", lambda d: _save(_scene()[0], d / "photo.png", format="JPEG"), "the shape", [(320, 240)]),
    ("exif-rotated", lambda d: _rotated_jpeg(d / "rotated.jpg"), "the shape", [(40, 60)]),
]


@pytest.mark.parametrize("make, text, expected", [case[1:] for case in AWKWARD], ids=[c[0] for c in AWKWARD])
def test_awkward_inputs_give_overlays_or_a_clear_error(handler, good_image, tmp_path, make, text, expected):
    upload = make(tmp_path)
    image = None if upload is None else str(upload)
    if isinstance(expected, str):
        with pytest.raises(gr.Error) as info:
            handler(image, text, 0.35)
        message = info.value.message
        assert re.search(expected, message, flags=re.IGNORECASE), message
        # The server-side location of the upload means nothing to the user and is not shown.
        assert str(tmp_path) not in message
    else:
        overlays, status = handler(image, text, 0.35)
        assert [o.size for o, _ in overlays] == expected
        if text is _LONG:
            assert "cut to the model's" in status
    _assert_good_request_works(handler, good_image)


def test_threshold_out_of_range_is_refused(handler, good_image):
    for bad in (0.0, 1.0, float("nan")):
        with pytest.raises(gr.Error, match="threshold"):
            handler(str(good_image), "the shape", bad)


def test_unexpected_failure_is_answered_and_the_next_request_works(model_dir, good_image, caplog):
    flaky = Predictor.from_pretrained(model_dir, device="cpu")
    real_predict = flaky.predict
    calls = []

    def predict_failing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated out of memory")
        return real_predict(*args, **kwargs)

    flaky.predict = predict_failing_once
    handle = make_handler(flaky, LIMITS)
    with pytest.raises(gr.Error, match="Internal error \\(RuntimeError\\)"):
        handle(str(good_image), "the shape", 0.35)
    assert "simulated out of memory" in caplog.text  # the traceback goes to the server log
    _assert_good_request_works(handle, good_image)


def test_segment_without_gradio_raises_plain_errors(predictor, good_image):
    """The request logic is usable without the UI: refusals are ValueErrors with the same messages."""
    with pytest.raises(ValueError, match="upload an image"):
        segment_upload(predictor, None, "the shape")
    overlays, _ = segment_upload(predictor, good_image, "the shape")
    assert overlays[0][0].size == (320, 240)


def test_build_app_bounds_the_queue(predictor):
    app = build_app(predictor, max_upload_mb=2, queue_size=3)
    assert app._queue.max_size == 3
    # Every event runs one at a time, and no REST route skips the queue.
    assert all(fn.concurrency_limit == 1 for fn in app.fns.values())
    assert app.api_open is False
    assert app.detris_limits.max_upload_bytes == 2 * 1024 * 1024
    with pytest.raises(ValueError, match="queue_size"):
        build_app(predictor, queue_size=0)
    # Building the app writes nothing into the package (Gradio's metaclass would add an app.pyi stub).
    import detris.app

    assert not Path(detris.app.__file__).with_suffix(".pyi").exists()


def test_serve_without_model_and_without_the_bundled_model_says_reinstall(tmp_path, monkeypatch, capsys):
    """No --model: the bundled model; when its files are gone, one line naming them and the fix."""
    from detris import bundled

    monkeypatch.setattr(bundled, "assets_dir", lambda: tmp_path)  # an installation without the assets
    assert cli_main(["serve"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and bundled.DEMO_MODEL_NAME in err[0] and "reinstall" in err[0], err


def test_the_page_says_what_the_bundled_model_knows(monkeypatch):
    """Served with the bundled model, the page says it knows synthetic shapes only and how to load a
    released checkpoint; with any other model it does not."""
    from detris.app import BUNDLED_MODEL_NOTE
    from detris.bundled import DEMO_MODEL_NAME

    predictor = Predictor.from_pretrained(DEMO_MODEL_NAME)
    notes = [getattr(b, "value", "") for b in build_app(predictor, model_name=DEMO_MODEL_NAME).blocks.values()]
    assert BUNDLED_MODEL_NOTE in notes
    assert "synthetic shapes only" in BUNDLED_MODEL_NOTE and "convert-official" in BUNDLED_MODEL_NOTE
    others = [getattr(b, "value", "") for b in build_app(predictor, model_name="my-model").blocks.values()]
    assert BUNDLED_MODEL_NOTE not in others


def test_serve_without_gradio_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` raise ImportError
    assert cli_main(["serve", "--model", "unused"]) == 2
    assert 'pip install "detris[demo]"' in capsys.readouterr().err


# ---------------------------------------------------------------------------- the live server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS line")


class Server:
    """``detris serve`` in a subprocess (its own process, so that its RSS can be read)."""

    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def rss_mb(self) -> float:
        return _rss_mb(self.proc.pid)

    def client(self, **kwargs):
        from gradio_client import Client

        return Client(self.url, verbose=False, analytics_enabled=False, download_files=False, **kwargs)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory) -> Iterator[Server]:
    import httpx

    port = _free_port()
    workdir = tmp_path_factory.mktemp("server")
    log = workdir / "serve.log"
    # Gradio's upload and output cache goes to the test's folder, not to the machine's shared /tmp/gradio.
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
           "GRADIO_TEMP_DIR": str(workdir / "gradio-cache")}
    cmd = [sys.executable, "-m", "detris.cli", "serve", "--model", str(model_dir), "--host", "127.0.0.1",
           "--port", str(port), "--device", "cpu", "--queue-size", str(QUEUE_SIZE),
           "--max-upload-mb", str(UPLOAD_MB)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90  # importing torch and gradio on a loaded 2-core machine is slow
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"detris serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"detris serve did not answer within 90 s:\n{log.read_text()}")
            time.sleep(0.3)
        yield Server(proc, url, log)
    finally:
        proc.send_signal(signal.SIGINT)  # Gradio closes cleanly on Ctrl-C
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_server_answers_errors_and_keeps_serving(server, good_image, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client = server.client()
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(AppError, match="cannot be used"):
        client.predict(handle_file(str(bad)), "the shape", 0.35, api_name="/segment")
    with pytest.raises(AppError, match="Type a referring expression"):
        client.predict(handle_file(str(good_image)), "   ", 0.35, api_name="/segment")
    gallery, status = client.predict(handle_file(str(good_image)), "the shape\nthe circle", 0.35,
                                     api_name="/segment")
    assert len(gallery) == 2 and status.startswith("2 expression(s) on a 320x240 image")
    assert server.proc.poll() is None


def test_server_refuses_oversized_uploads(server, tmp_path):
    """The upload route itself enforces --max-upload-mb (the client's own check is not relied on)."""
    import httpx

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(int(1.5 * 1024 * 1024)))
    small = tmp_path / "small.bin"
    small.write_bytes(os.urandom(1000))
    with open(big, "rb") as fh:
        refused = httpx.post(server.url + "gradio_api/upload", files={"files": ("big.png", fh)}, timeout=30)
    with open(small, "rb") as fh:
        accepted = httpx.post(server.url + "gradio_api/upload", files={"files": ("small.png", fh)}, timeout=30)
    assert refused.status_code == 413, refused.text
    assert accepted.status_code == 200, accepted.text
    assert server.proc.poll() is None


@pytest.mark.slow
def test_burst_of_50_is_answered_or_rejected_and_memory_returns(server, tmp_path):
    """50 concurrent requests against a queue of 4: each is answered or told "queue is full"; no other
    outcome, nothing hangs, the server still serves, and its RSS returns near the warmed-up baseline.

    Memory tolerance: after the burst and a settle period, RSS <= baseline + max(100 MB, 20 % of
    baseline). The baseline is taken after warm-up requests (first requests allocate lasting things:
    the tokenizer cache, torch's allocator pools, Gradio's per-session state).
    """
    from gradio_client import handle_file
    from gradio_client.utils import QueueError

    rgb, texts = _scene(height=360, width=480)
    image = tmp_path / "burst.png"
    Image.fromarray(rgb).save(image)
    text = "\n".join(texts * 2)  # 4 expressions: each request keeps the single worker busy a little
    client = server.client(max_workers=BURST + 8)  # the client's pool must not itself bound the burst

    for _ in range(5):  # warm-up
        client.predict(handle_file(str(image)), text, 0.35, api_name="/segment")
    time.sleep(2.0)
    baseline = server.rss_mb()

    peak = [baseline]
    sampling = threading.Event()

    def sample_rss() -> None:
        while not sampling.is_set():
            peak.append(server.rss_mb())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    outcomes: collections.Counter = collections.Counter()
    errors: list[str] = []
    barrier = threading.Barrier(BURST)

    def one_request() -> None:
        barrier.wait(timeout=30)  # all 50 go out together
        try:
            gallery, _ = client.predict(handle_file(str(image)), text, 0.35, api_name="/segment")
            outcomes["answered" if len(gallery) == 4 else "wrong answer"] += 1
        except QueueError:
            outcomes["rejected"] += 1
        except Exception as exc:  # counted and shown, not hidden
            outcomes["failed"] += 1
            errors.append(f"{type(exc).__name__}: {exc}")

    started = time.monotonic()
    threads = [threading.Thread(target=one_request, daemon=True) for _ in range(BURST)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, 120 - (time.monotonic() - started)))
    hung = sum(t.is_alive() for t in threads)
    burst_seconds = time.monotonic() - started
    sampling.set()
    sampler.join()

    # Settle: Gradio finishes its bookkeeping (event streams, cache writes) after the last answer.
    tolerance = max(100.0, 0.2 * baseline)
    after = server.rss_mb()
    for _ in range(20):
        if after <= baseline + tolerance:
            break
        time.sleep(0.5)
        after = server.rss_mb()
    print(f"\nburst of {BURST}, queue {QUEUE_SIZE}: {dict(outcomes)} in {burst_seconds:.1f} s; RSS baseline "
          f"{baseline:.0f} MB, peak {max(peak):.0f} MB, after {after:.0f} MB (tolerance {tolerance:.0f} MB)")

    assert hung == 0, f"{hung} requests got no answer within 120 s"
    assert not errors, errors[:5]
    assert outcomes["answered"] + outcomes["rejected"] == BURST, dict(outcomes)
    assert outcomes["answered"] >= 1 and outcomes["rejected"] >= 1, dict(outcomes)  # the bound is real
    assert server.proc.poll() is None, server.log.read_text()
    gallery, _ = client.predict(handle_file(str(image)), "the shape", 0.35, api_name="/segment")
    assert len(gallery) == 1
    assert after <= baseline + tolerance, f"RSS {after:.0f} MB vs baseline {baseline:.0f} MB"


# ------------------------------------------------------------------------------- the browser


def _browser(tmp_path: Path):
    """Headless Chromium through the system chromedriver; skips with the missing binary's name."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not Path(binary).is_file():
            pytest.skip(f"{binary} is missing (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    # The network-quietening flags matter on a machine without internet: without them Chromium keeps
    # retrying its own background requests and can stall the page.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1000", "--hide-scrollbars",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    return driver


@pytest.mark.browser
def test_browser_upload_type_click_shows_overlay(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    rgb, texts = _scene(height=300, width=400, seed=5)
    image = tmp_path / "scene.png"
    Image.fromarray(rgb).save(image)

    driver = _browser(tmp_path)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(server.url)
        upload = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detris-image input[type=file]"))[0]
        upload.send_keys(str(image))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detris-image img"))  # the preview
        driver.find_element(By.CSS_SELECTOR, "#detris-text textarea").send_keys("\n".join(texts))
        # A lower threshold than the default: the random test model's probabilities stay low, and the
        # value typed here must reach the server (the status repeats it).
        threshold = driver.find_element(By.CSS_SELECTOR, "#detris-threshold input[type=number]")
        threshold.clear()
        threshold.send_keys("0.1\t")
        driver.find_element(By.CSS_SELECTOR, "#detris-run").click()

        def overlays_loaded(d) -> list | None:
            # The gallery's images must have arrived and decoded, not just their <img> tags.
            return d.execute_script(
                "const imgs = [...document.querySelectorAll('#detris-gallery img')];"
                f"return imgs.length == {len(texts)} && imgs.every(i => i.complete && i.naturalWidth > 0)"
                "  ? imgs.map(i => [i.naturalWidth, i.naturalHeight]) : null;"
            )

        sizes = wait.until(overlays_loaded)
        assert sizes == [[400, 300]] * len(texts)  # one overlay per expression, at the upload's size
        status = wait.until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#detris-status textarea").get_attribute("value")
        )
        assert status.startswith(f"{len(texts)} expression(s) on a 400x300 image"), status
        assert "threshold 0.1)" in status, status
        time.sleep(0.5)  # let the gallery's fade-in finish before the picture is taken
        shot = tmp_path / "demo_screenshot.png"
        driver.save_screenshot(str(shot))
        assert Image.open(shot).size[0] > 0
        if os.environ.get("DETRIS_UPDATE_SCREENSHOT") == "1":
            shutil.copyfile(shot, REPO / "docs" / "demo_screenshot.png")

        # A refused request shows its message in the page.
        box = driver.find_element(By.CSS_SELECTOR, "#detris-text textarea")
        box.clear()
        box.send_keys("   ")
        driver.find_element(By.CSS_SELECTOR, "#detris-run").click()
        wait.until(lambda d: "Type a referring expression" in d.find_element(By.TAG_NAME, "body").text)

        # Offline: the page loaded nothing from anywhere but this server.
        hosts = set()
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                parsed = urlparse(message["params"]["request"]["url"])
                if parsed.scheme in ("http", "https", "ws", "wss"):
                    hosts.add(parsed.hostname)
        assert hosts == {"127.0.0.1"}, hosts
    finally:
        driver.quit()
    assert server.proc.poll() is None
