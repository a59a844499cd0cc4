"""The web demo under abuse: many requests in bounded bursts against a live ``detris serve`` on 127.0.0.1.

    python benchmarks/web_abuse.py --requests 1000 --burst 24

The mix: valid PNG/JPEG images with one to eight expressions; corrupt, truncated, empty and
header-bomb files; uploads over the size limit (straight to the upload route); 10,000-character,
emoji-only, empty and nine-line expressions. Every request must be answered (overlays) or rejected
with a message (the page's error, "queue is full", HTTP 413 with its reason); anything else counts as
an error. Printed: answered / rejected / errors, the distinct rejection messages, the server's RSS
before (after warm-up), at its peak and after, whether it still serves, and how many files are left
in its upload folder once the cache period (``--cache-minutes``) has passed.
Exit status 0 when there is no error, the server still serves, RSS stays under the bound and the
upload folder is empty.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _scene(seed: int, height: int, width: int) -> np.ndarray:
    """Grey background with a few coloured rectangles and discs (what the bundled model knows)."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 128, np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(3):
        colour = rng.integers(0, 255, 3)
        cy, cx, r = rng.integers(20, height - 20), rng.integers(20, width - 20), rng.integers(8, 30)
        if rng.random() < 0.5:
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = colour
        else:
            img[max(cy - r, 0):cy + r, max(cx - r, 0):cx + r] = colour
    return img


def _png_claiming(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def make_inputs(folder: Path, upload_mb: float) -> dict[str, Path]:
    """The image files of the mix, written into ``folder``."""
    files: dict[str, bytes] = {}
    for k, (h, w) in enumerate([(240, 320), (300, 200)]):
        buf = io.BytesIO()
        Image.fromarray(_scene(k, h, w)).save(buf, format="PNG" if k == 0 else "JPEG", quality=85)
        files["valid.png" if k == 0 else "valid.jpg"] = buf.getvalue()
    files["corrupt.png"] = b"\x89PNG\r\n\x1a\n" + random.Random(0).randbytes(3000)
    files["truncated.png"] = files["valid.png"][: len(files["valid.png"]) // 2]
    files["empty.png"] = b""
    files["random.jpg"] = random.Random(1).randbytes(5000)
    files["bomb.png"] = _png_claiming(100_000, 100_000)
    files["oversize.png"] = random.Random(2).randbytes(int((upload_mb + 0.5) * 2**20))
    paths = {}
    for name, data in files.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return paths


_TEXTS = {
    "one": "the red circle",
    "two": "the circle on the left\nthe square",
    "eight": "\n".join(f"shape number {i}" for i in range(8)),
    "nine": "\n".join(f"shape number {i}" for i in range(9)),
    "long": "x" * 10_000,
    "emoji": "\U0001f436 the \U0001f600 dog \u2728",
    "emoji_only": "\U0001f600" * 1000,
    "empty": "   ",
}


def plan(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (image, text) pairs: about half valid requests, the rest hostile in every way."""
    rng = random.Random(seed)
    good_images, bad_images = ["valid.png", "valid.jpg"], ["corrupt.png", "truncated.png", "empty.png",
                                                           "random.jpg", "bomb.png", "oversize.png"]
    good_texts, bad_texts = ["one", "two", "eight", "emoji", "emoji_only"], ["nine", "long", "empty"]
    cases = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.5:
            cases.append((rng.choice(good_images), rng.choice(good_texts)))
        elif roll < 0.8:
            cases.append((rng.choice(bad_images), rng.choice(good_texts)))
        else:
            cases.append((rng.choice(good_images), rng.choice(bad_texts)))
    return cases


class Server:
    """``detris serve`` (the bundled demo model) in a subprocess, with its own upload folder."""

    def __init__(self, workdir: Path, queue_size: int, upload_mb: float, cache_minutes: float) -> None:
        self.port = _free_port()
        self.upload_dir = workdir / "gradio-uploads"
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = workdir / "serve.log"
        env = {**os.environ, "GRADIO_TEMP_DIR": str(self.upload_dir), "PYTHONUNBUFFERED": "1",
               "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "detris.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--device", "cpu", "--queue-size", str(queue_size), "--max-upload-mb", str(upload_mb),
               "--cache-minutes", str(cache_minutes)]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 180) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"detris serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"detris serve did not answer within {timeout:.0f} s")

    def rss_mb(self) -> float:
        return _rss_mb(self.proc.pid)

    def files_left(self) -> list[str]:
        return sorted(str(p.relative_to(self.upload_dir)) for p in self.upload_dir.rglob("*") if p.is_file())

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def one_request(client: Any, server: Server, image: Path, text: str) -> tuple[str, str]:
    """Send one request; returns (outcome, message) with outcome answered / rejected / error."""
    import httpx
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError

    if image.name == "oversize.png":  # straight to the upload route: the server itself must refuse it
        with open(image, "rb") as fh:
            response = httpx.post(server.url + "gradio_api/upload", files={"files": (image.name, fh)}, timeout=60)
        if response.status_code == 413 and response.text:
            return "rejected", f"HTTP 413: {response.text}"
        return "error", f"oversize upload answered HTTP {response.status_code}: {response.text[:200]}"
    try:
        gallery, status = client.predict(handle_file(str(image)), text, 0.35, api_name="/segment")
    except QueueError as exc:
        return "rejected", f"queue: {exc}"
    except AppError as exc:
        message = str(exc)
        return ("error" if not message or message.startswith("Internal error") else "rejected"), message
    except Exception as exc:  # counted, never hidden
        return "error", f"{type(exc).__name__}: {exc}"
    expected = len([line for line in text.splitlines() if line.strip()])
    if len(gallery) != expected or not status:
        return "error", f"{len(gallery)} overlays for {expected} expressions"
    return "answered", ""


def run_bursts(server: Server, cases: list[tuple[Path, str]], burst: int) -> dict[str, Any]:
    """All cases, ``burst`` at a time (each burst sent together, the next once it is done)."""
    from gradio_client import Client

    client = Client(server.url, verbose=False, analytics_enabled=False, download_files=False,
                    max_workers=burst + 8)
    outcomes: collections.Counter = collections.Counter()
    messages: collections.Counter = collections.Counter()
    errors: list[str] = []
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=burst) as pool:
        for i in range(0, len(cases), burst):
            futures = [pool.submit(one_request, client, server, image, text) for image, text in cases[i:i + burst]]
            for future in futures:
                outcome, message = future.result(timeout=600)
                outcomes[outcome] += 1
                if outcome == "rejected":
                    messages[message.splitlines()[0][:110]] += 1
                elif outcome == "error":
                    errors.append(message[:300])
    return {"outcomes": dict(outcomes), "messages": messages, "errors": errors,
            "seconds": time.monotonic() - start, "client": client}


def _sample_rss(server: Server, peak: list[float], done: threading.Event) -> None:
    while not done.is_set():
        try:
            peak.append(server.rss_mb())
        except OSError:
            return
        time.sleep(0.1)


def _wait_for_cleanup(server: Server, cache_minutes: float) -> list[str]:
    """Files left in the upload folder once the cache period and one clean-up round have passed."""
    deadline = time.monotonic() + cache_minutes * 60 + min(60.0, cache_minutes * 60) + 15
    left = server.files_left()
    while left and time.monotonic() < deadline:
        time.sleep(2)
        left = server.files_left()
    return left


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=24, help="requests sent together (the queue holds --queue-size)")
    parser.add_argument("--queue-size", type=int, default=16)
    parser.add_argument("--upload-mb", type=float, default=2.0)
    parser.add_argument("--cache-minutes", type=float, default=0.5)
    parser.add_argument("--rss-bound-mb", type=float, default=300.0, help="allowed RSS growth over the warm baseline")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="detris-web-abuse-"))
    inputs = make_inputs(workdir, args.upload_mb)
    server = Server(workdir, args.queue_size, args.upload_mb, args.cache_minutes)
    try:
        server.wait_ready()
        warm = [(inputs["valid.png"], _TEXTS["two"])] * 4
        run_bursts(server, warm, 1)  # first requests allocate lasting things (caches, allocator pools)
        time.sleep(2)
        before = server.rss_mb()
        peak: list[float] = [before]
        done = threading.Event()
        sampler = threading.Thread(target=_sample_rss, args=(server, peak, done), daemon=True)
        sampler.start()
        cases = [(inputs[image], _TEXTS[text]) for image, text in plan(args.requests, args.seed)]
        result = run_bursts(server, cases, args.burst)
        time.sleep(3)
        done.set()
        sampler.join()
        after = server.rss_mb()
        serving = run_bursts(server, [(inputs["valid.png"], _TEXTS["one"])], 1)["outcomes"] == {"answered": 1}
        left = _wait_for_cleanup(server, args.cache_minutes)
        alive = server.proc.poll() is None
    finally:
        server.stop()
    o = result["outcomes"]
    summary = {"requests": len(cases), "burst": args.burst, "queue_size": args.queue_size,
               "answered": o.get("answered", 0), "rejected": o.get("rejected", 0), "errors": o.get("error", 0),
               "seconds": round(result["seconds"], 1), "rss_before_mb": round(before), "rss_peak_mb": round(max(peak)),
               "rss_after_mb": round(after), "rss_bound_mb": round(before + args.rss_bound_mb),
               "still_serving": serving and alive, "upload_files_left": len(left)}
    print(json.dumps(summary))
    print("rejection messages (count: first line):")
    for message, count in result["messages"].most_common():
        print(f"  {count:4d}: {message}")
    for error in result["errors"][:20]:
        print(f"  ERROR: {error}")
    if left:
        print(f"  files left in the upload folder: {left[:10]}")
    ok = (not result["errors"] and summary["still_serving"] and not left
          and max(peak) <= before + args.rss_bound_mb)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
