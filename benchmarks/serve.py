"""make bench-serve: `mnistlit serve` on loopback under a bounded number of requests from local clients.

For each checkpoint: single-client p50/p95 latency of POST /predict with a 280x280 PNG, and
requests/s with 1, 4 and 16 concurrent clients (each on one keep-alive connection). Then the
server under a burst: a 1,000-image /predict/batch and 16 images of 6300x6300 (40 MP, the cap)
sent at once, while GET /health is polled every 50 ms: its median and slowest answer, and the
server's peak resident memory. The clients run in this process, on the same cores as the server,
as a user's browser would. Traffic goes only to 127.0.0.1; every loop is bounded in count.
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

import measured
from PIL import Image, ImageDraw
from run import ROOT, cpu_name

BATCH_IMAGES = 1000
LARGE_IMAGES = 16


def drawn_seven(size: int = 280, scale: float = 1.0) -> bytes:
    """What the page sends: a PNG of a stroke-drawn digit, 280x280 by default."""
    image = Image.new("L", (size, size), 255)
    points = [(int(x * scale), int(y * scale)) for x, y in [(90, 50), (190, 50), (120, 240)]]
    ImageDraw.Draw(image).line(points, fill=0, width=max(2, int(18 * scale)), joint="curve")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(files: list[bytes]) -> tuple[bytes, str]:
    boundary = "mnistlit-bench"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{i}.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for i, data in enumerate(files)
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(port: int, body: bytes, count: int, path: str = "/predict", kind: str = "image/png") -> list[float]:
    """``count`` requests on one connection; the latency of each, in seconds."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        connection.request("POST", path, body, {"content-type": kind})
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status
        latencies.append(time.perf_counter() - started)
    connection.close()
    return latencies


def health(port: int) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    started = time.perf_counter()
    connection.request("GET", "/health")
    response = connection.getresponse()
    response.read()
    assert response.status == 200, response.status
    connection.close()
    return time.perf_counter() - started


def under_a_burst(port: int, server_pid: int) -> dict:
    """/health's median and slowest answer while a large batch and large images are in flight,
    and the server's peak resident memory (VmHWM) by then."""
    batch, batch_kind = multipart([drawn_seven(56, 0.2) for _ in range(BATCH_IMAGES)])
    large = drawn_seven(6300, 22.5)
    with ThreadPoolExecutor(1 + LARGE_IMAGES) as clients:
        batch_done = clients.submit(post, port, batch, 1, "/predict/batch", batch_kind)
        time.sleep(0.5)
        large_done = [clients.submit(post, port, large, 1) for _ in range(LARGE_IMAGES)]
        waits = []
        while not all(f.done() for f in large_done) or len(waits) < 20:
            waits.append(health(port))
            time.sleep(0.05)
        for f in large_done:
            f.result()
        batch_done.result()
    status = Path(f"/proc/{server_pid}/status").read_text()
    peak_mb = int(status.split("VmHWM:")[1].split()[0]) / 1024
    return {"health_p50": statistics.median(waits), "health_max": max(waits), "peak_mb": peak_mb}


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
        return result | under_a_burst(port, server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", nargs="+", default=["best"], help="checkpoints (default: best)")
    parser.add_argument("--requests", type=int, default=800, help="per measurement (bounded)")
    parser.add_argument("--rounds", type=int, default=3, help="each cell is the median of this many")
    parser.add_argument("--json", metavar="FOLDER", help="also write the table as JSON there (make docs)")
    args = parser.parse_args()
    print(f"POST /predict, 280x280 PNG, {args.requests} requests per row; {cpu_name()}\n")
    columns = ["network", "p50 ms, 1 client", "p95 ms, 1 client", "req/s, 1 client", "4 clients",
               "16 clients", "/health p50 ms, burst", "/health max ms, burst",
               "peak RSS MB, burst"]  # fmt: skip
    print("| " + " | ".join(columns) + " |\n|---|" + "---:|" * (len(columns) - 1))
    rounds = [
        [measure(checkpoint, args.requests) for checkpoint in args.ckpt_path] for _ in range(args.rounds)
    ]
    rows = []
    for i, checkpoint in enumerate(args.ckpt_path):
        r = {key: statistics.median(round_[i][key] for round_ in rounds) for key in rounds[0][i]}
        about = subprocess.run(
            [sys.executable, "-m", "mnistlit", "describe", "--ckpt_path", checkpoint],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        network = about.split("network:")[1].split()[0].rsplit(".", 1)[-1]
        row = [network, round(1000 * r["p50"], 2), round(1000 * r["p95"], 2), round(r[1]), round(r[4]),
               round(r[16]), round(1000 * r["health_p50"], 1), round(1000 * r["health_max"], 1),
               round(r["peak_mb"])]  # fmt: skip
        rows.append(row)
        print("| " + " | ".join(str(value) for value in row) + " |", flush=True)
    if args.json:
        note = (
            f"Medians of {args.rounds} rounds (a new server each, the networks alternating). "
            f"{args.requests} requests of a 280×280 PNG per latency and throughput cell, after 50 to warm "
            f"up; the burst: one /predict/batch of {BATCH_IMAGES} 56×56 PNGs, then {LARGE_IMAGES} "
            "6300×6300 PNGs (40 MP, the cap) at once, /health polled every 50 ms until they are answered. "
            "Server and clients share the machine's cores."
        )
        command = f"python benchmarks/serve.py --requests {args.requests} --rounds {args.rounds}"
        print(f"\nwritten: {measured.write(args.json, 'serve_load', command, columns, rows, note)}")


if __name__ == "__main__":
    main()
