"""Take docs/demo_screenshot.png: the web demo serving the bundled model, in headless Chromium.

    python tools/screenshot_demo.py [--seed 5150] [--out docs/demo_screenshot.png]

Starts ``detris serve`` (no ``--model``: the bundled ``detris-tiny-synthetic``) on a free loopback port,
uploads a synthetic scene of a seed no training used, types the first expression of three of its
objects, presses Segment and saves the page once the overlays have arrived. Needs the demo and test
extras (Gradio, Selenium) and Debian's chromium + chromium-driver.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from detris.data.synthetic import SyntheticScenes

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Flags for a machine without internet: no background requests that would stall the page.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1000", "--hide-scrollbars")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"detris serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"detris serve did not answer at {url}")


def shoot(image: Path, texts: list[str], url: str, out: Path, work: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = Options()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={work / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        wait = WebDriverWait(driver, 120)
        driver.get(url)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detris-image input[type=file]"))[0].send_keys(
            str(image))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detris-image img"))
        driver.find_element(By.CSS_SELECTOR, "#detris-text textarea").send_keys("\n".join(texts))
        driver.find_element(By.CSS_SELECTOR, "#detris-run").click()
        wait.until(lambda d: d.execute_script(
            "const imgs = [...document.querySelectorAll('#detris-gallery img')];"
            f"return imgs.length == {len(texts)} && imgs.every(i => i.complete && i.naturalWidth > 0);"))
        time.sleep(1.0)  # the gallery's fade-in
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=5150, help="scene seed (unused by any training)")
    parser.add_argument("--out", default=str(REPO / "docs" / "demo_screenshot.png"))
    args = parser.parse_args(argv)
    scene = SyntheticScenes(1, seed=args.seed, image_size=(336, 336), min_objects=3, max_objects=4)[0]
    texts = [obj.expressions[0] for obj in scene.objects][:3]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        image = work / "scene.png"
        Image.fromarray(scene.image).save(image)
        port = _free_port()
        cmd = [sys.executable, "-m", "detris.cli", "serve", "--port", str(port), "--device", "cpu"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for(f"http://127.0.0.1:{port}/", proc)
            shoot(image, texts, f"http://127.0.0.1:{port}/", Path(args.out), work)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"wrote {args.out} ({', '.join(texts)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
