"""make bench-serve: `mnistlit serve` on loopback under a bounded number of requests from local clients.

For each checkpoint: single-client p50/p95 latency of POST /predict with a 280x280 PNG, and
requests/s with 1, 4 and 16 concurrent clients (each on one keep-alive connection). The
clients run in this process, on the same 2 cores as the server, as a user's browser would.
Traffic goes only to 127.0.0.1; every loop is bounded in count.
"""

import argparse
import http.client
import io
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw
from run import ROOT, cpu_name


def drawn_seven() -> bytes:
    """What the page sends: a 280x280 PNG of a stroke-drawn digit."""
    image = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(image).line([(90, 50), (190, 50), (120, 240)], fill=0, width=18, joint="curve")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def post(port: int, body: bytes, count: int) -> list[float]:
    """``count`` requests on one connection; the latency of each, in seconds."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        connection.request("POST", "/predict", body, {"content-type": "image/png"})
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status
        latencies.append(time.perf_counter() - started)
    connection.close()
    return latencies


def measure(checkpoint: str, requests: int) -> dict:
    server = subprocess.Popen(
        [sys.executable, "-m", "mnistlit", "serve", "--ckpt_path", checkpoint, "--port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        line = server.stdout.readline()
        port = int(line.split("127.0.0.1:")[1].split()[0])
        body = drawn_seven()
        post(port, body, 50)  # warm-up
        single = sorted(post(port, body, requests))
        result = {"p50": statistics.median(single), "p95": single[int(0.95 * len(single)) - 1]}
        for clients in (1, 4, 16):
            each = requests // clients
            with ThreadPoolExecutor(clients) as pool:
                started = time.perf_counter()
                list(pool.map(post, [port] * clients, [body] * clients, [each] * clients))
                result[clients] = each * clients / (time.perf_counter() - started)
        return result
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", nargs="+", default=["best"], help="checkpoints (default: best)")
    parser.add_argument("--requests", type=int, default=800, help="per measurement (bounded)")
    args = parser.parse_args()
    print(f"POST /predict, 280x280 PNG, {args.requests} requests per row; {cpu_name()}\n")
    print("| checkpoint | p50 (1 client) | p95 (1 client) | req/s, 1 client | 4 clients | 16 clients |")
    print("|---|---:|---:|---:|---:|---:|")
    for checkpoint in args.ckpt_path:
        r = measure(checkpoint, args.requests)
        name = Path(checkpoint).name if checkpoint not in ("best", "last") else checkpoint
        print(
            f"| {name} | {1000 * r['p50']:.1f} ms | {1000 * r['p95']:.1f} ms "
            f"| {r[1]:.0f} | {r[4]:.0f} | {r[16]:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
