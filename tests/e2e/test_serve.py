"""mnistlit serve: the JSON API in-process (FastAPI's TestClient), and the real server in a subprocess."""

import base64
import concurrent.futures
import contextlib
import http.client
import io
import json
import logging
import signal
import socket
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from mnistlit.core.module import LitClassifier
from mnistlit.deploy import serve
from mnistlit.deploy.serve import Classifier, create_app
from tests.helpers import (
    CONFIGS,
    ROOT,
    assert_one_clear_line,
    cli,
    draw_digits,
    draw_seven,
    png_header_only,
    run_cli,
    start_cli,
)
from tests.unit.deploy.test_preprocess import dot


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


SEVEN = png(draw_seven(size=(280, 280), origin=(90, 40)))


PNG = {"content-type": "image/png"}
# The server's peak resident memory while 16 images of 40 MP (6300x6300) are sent at once: the
# process with torch and a model holds ~0.9 GB; each image decoded holds ~40 MB to ~160 MB
# (grey to RGBA) until it is shrunk, and as many are decoded at once as there are cores.
MAX_SERVER_MB = 1500


@pytest.fixture(scope="module")
def client() -> TestClient:
    torch.manual_seed(0)
    classifier = Classifier(LitClassifier(), [str(d) for d in range(10)], {"net": "mnistlit.core.nets.Net"})
    return TestClient(create_app(classifier, max_upload_bytes=200_000))


@pytest.fixture(scope="module")
def live(client: TestClient) -> Iterator[int]:
    """The client's app on a real uvicorn, set up as ``serve`` sets it up, in a thread of this
    process, on a free loopback port: the port."""
    listener = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(serve.uvicorn_config(client.app))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield listener.getsockname()[1]
    server.should_exit = True
    thread.join(10)
    listener.close()


def request(port: int, path: str, body: bytes | None = None, kind: str = "") -> tuple[int, object]:
    """The status and JSON answer of a request to the server on ``port``."""
    headers = {"content-type": kind} if kind else {}
    sent = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers)
    try:
        with urllib.request.urlopen(sent, timeout=300) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(port: int, path: str) -> tuple[int, object]:
    return request(port, path)


def post(port: int, path: str, body: bytes, kind: str) -> tuple[int, object]:
    return request(port, path, body, kind)


def assert_a_prediction(answer: dict) -> None:
    keys = {"digit", "label", "probability", "unsure", "probabilities", "classes", "input_28x28"}
    assert set(answer) == keys
    assert answer["classes"] == [str(d) for d in range(10)] and answer["label"] == str(answer["digit"])
    assert abs(sum(answer["probabilities"]) - 1) < 1e-4
    assert answer["probability"] == pytest.approx(max(answer["probabilities"]), abs=1e-6)
    header, encoded = answer["input_28x28"].split(",", 1)
    assert header == "data:image/png;base64"
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as seen:
        assert seen.size == (28, 28)


def test_the_docs_page_is_served_from_the_pinned_swagger_ui_dist(client: TestClient) -> None:
    """The files /docs loads are in the package, byte for byte those of the swagger-ui-dist version
    package-lock.json pins (``make swagger-ui`` copies them after a version change)."""
    dist = ROOT / "node_modules" / "swagger-ui-dist"
    assert dist.is_dir(), "make installs node_modules (npm ci)"
    page = client.get("/docs").text
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
        assert f'"static/swagger-ui/{name}"' in page
        served = client.get(f"/static/swagger-ui/{name}")
        assert served.status_code == 200 and served.content == (dist / name).read_bytes(), name
    assert "http" not in page.split("<body>")[0], "nothing from another site"
    assert client.get("/redoc").status_code == 404
    body = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]
    assert set(body["content"]) == {"multipart/form-data", "image/png", "image/jpeg", "application/json"}


def test_health_names_the_model(client: TestClient) -> None:
    answer = client.get("/health")
    assert answer.status_code == 200 and answer.json() == {
        "status": "ok",
        "model": {"net": "mnistlit.core.nets.Net"},
    }


PNG = {"content-type": "image/png"}


def test_an_answer_less_probable_than_the_threshold_is_unsure(client: TestClient) -> None:
    probability = client.post("/predict", content=SEVEN, headers=PNG).json()["probability"]
    untold = client.post("/predict", content=SEVEN, headers=PNG).json()
    assert untold["unsure"] is None, "no threshold, no flag"
    torch.manual_seed(0)  # the client's model
    model, classes = LitClassifier(), [str(d) for d in range(10)]
    for threshold, unsure in ((probability + 0.01, True), (probability - 0.01, False)):
        classifier = Classifier(model, classes, {}, unsure_below=threshold)
        answer = TestClient(create_app(classifier)).post("/predict", content=SEVEN, headers=PNG).json()
        assert answer["probability"] == probability and answer["unsure"] is unsure


def test_raw_multipart_and_json_uploads_give_the_same_answer(client: TestClient) -> None:
    raw = client.post("/predict", content=SEVEN, headers={"content-type": "image/png"})
    multipart = client.post("/predict", files={"image": ("seven.png", SEVEN, "image/png")})
    data_url = "data:image/png;base64," + base64.b64encode(SEVEN).decode()
    as_json = client.post("/predict", json={"image": data_url})
    for answer in (raw, multipart, as_json):
        assert answer.status_code == 200, answer.text
        assert_a_prediction(answer.json())
    assert raw.json() == multipart.json() == as_json.json()


def test_a_batch_answers_every_image_in_order_with_an_error_for_the_bad_one(client: TestClient) -> None:
    files = [
        ("a", ("a.png", SEVEN, "image/png")),
        ("b", ("b.txt", b"not an image", "text/plain")),
        ("c", ("c.png", SEVEN, "image/png")),
    ]
    answer = client.post("/predict/batch", files=files)
    assert answer.status_code == 200
    first, bad, last = answer.json()
    assert_a_prediction(first)
    assert first == last
    assert set(bad) == {"error"} and "not an image" in bad["error"]


@pytest.mark.parametrize(
    ("request_kwargs", "status", "phrase"),
    [
        ({"content": b"", "headers": PNG}, 400, "no image"),
        ({"content": b"hello", "headers": PNG}, 422, "not an image"),
        (
            {"content": png(Image.new("L", (50, 50), 255)), "headers": {"content-type": "image/png"}},
            422,
            "no ink",
        ),
        (
            {"content": b"x" * 200_001, "headers": {"content-type": "image/png"}},
            413,
            "larger than 200,000 bytes",
        ),
        (
            {"content": png_header_only(20_000, 20_000), "headers": {"content-type": "image/png"}},
            422,
            "pixels",
        ),
        ({"content": png(dot()), "headers": PNG}, 422, "too little ink to be a digit (a dot?): draw a digit"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "not text/plain"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ({"json": {"picture": "x"}}, 400, '{"image"'),
        ({"json": {"image": "data:image/png;base64,@@@"}}, 400, "not valid base64"),
        ({"json": {"image": "data:image/png;base64"}}, 400, "no comma"),
        (
            {"content": b"[" * 100_000 + b"]" * 100_000, "headers": {"content-type": "application/json"}},
            400,
            "nested too deeply",
        ),
    ],
    ids=[
        "empty",
        "not-an-image",
        "blank",
        "too-large",
        "bomb",
        "dot",
        "content-type",
        "bad-json",
        "no-image-key",
        "base64",
        "data-url-without-comma",
        "deep-json",
    ],
)
def test_bad_input_is_a_4xx_json_error(
    client: TestClient, live: int, caplog, request_kwargs, status, phrase
) -> None:
    answer = client.post("/predict", **request_kwargs)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error"} and phrase in answer.json()["error"]
    assert "object at 0x" not in answer.json()["error"], "no Python repr in a message for people"
    assert client.get("/health").status_code == 200, "the server keeps serving"
    # The same request to a real uvicorn on loopback: the same answer, and nothing in its log.
    body = request_kwargs.get("content", json.dumps(request_kwargs.get("json")).encode())
    kind = request_kwargs.get("headers", {}).get("content-type", "application/json")
    caplog.clear()
    assert post(live, "/predict", body, kind) == (status, answer.json())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert get(live, "/health")[0] == 200


def test_a_client_slower_than_the_header_deadline_is_disconnected(live: int, monkeypatch) -> None:
    monkeypatch.setattr(serve, "HEADER_SECONDS", 1)
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    silent = [socket.create_connection(("127.0.0.1", live), timeout=5) for _ in range(5)]
    trickling = [socket.create_connection(("127.0.0.1", live), timeout=5) for _ in range(20)]
    keep_alive = http.client.HTTPConnection("127.0.0.1", live, timeout=5)
    keep_alive.request("GET", "/health")
    assert keep_alive.getresponse().read(), "a first request answered on a keep-alive connection"
    reused = keep_alive.sock
    started = time.monotonic()
    for byte in request[:10]:  # a byte every 0.2 s: uvicorn's keep-alive timer alone would never fire
        for connection in [*trickling, reused]:
            with contextlib.suppress(OSError):  # closed by the server
                connection.send(bytes([byte]))
        assert get(live, "/health")[0] == 200, "others are served meanwhile"
        time.sleep(0.2)
    for connection in [*silent, *trickling, reused]:
        with contextlib.suppress(ConnectionResetError):
            assert connection.recv(65536) == b"", "closed without an answer"
        connection.close()
    assert time.monotonic() - started < 3


def test_an_upload_slower_than_the_body_deadline_is_a_408(live: int, monkeypatch) -> None:
    monkeypatch.setattr(serve, "BODY_SECONDS", 1)
    with socket.create_connection(("127.0.0.1", live), timeout=5) as connection:
        connection.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n")
        connection.sendall(b"Content-Length: 1000\r\n\r\n" + SEVEN[:100])
        answer = b""
        while chunk := connection.recv(65536):  # until the server closes the connection
            answer += chunk
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower(), head
    assert json.loads(body) == {"error": "the upload took longer than 1 s"}


def test_connections_beyond_the_limit_are_a_json_503(live: int, monkeypatch) -> None:
    monkeypatch.setattr(serve, "MAX_CONNECTIONS", 8)
    held = [socket.create_connection(("127.0.0.1", live), timeout=5) for _ in range(8)]
    time.sleep(0.2)  # accepted
    status, answer = get(live, "/health")
    assert (status, answer) == (503, {"error": "the server has 8 connections open; try again"})
    for connection in held:
        connection.close()
    time.sleep(0.2)
    assert get(live, "/health")[0] == 200


# docs/serve.md's stop times: measured 0.5 s idle and 1.5 s under load on 2 cores (the requests in
# flight get a second to finish, then a JSON 503).
@pytest.mark.parametrize(
    ("stop", "busy", "within"),
    [(signal.SIGTERM, False, 1.0), (signal.SIGINT, False, 1.0), (signal.SIGTERM, True, 2.5)],
    ids=["sigterm-idle", "ctrl-c-idle", "sigterm-under-load"],
)
def test_the_server_stops_cleanly_and_frees_its_port(trained: Path, stop, busy: bool, within: float) -> None:
    server = start_cli(trained, "serve", *CONFIGS, "--ckpt_path", "best", "--port", "0")
    try:
        line = server.stdout.readline()
        assert line.startswith("serving on http://127.0.0.1:"), line + server.stderr.read()[-3000:]
        port = int(line.split("127.0.0.1:")[1].split()[0])
        model = get(port, "/health")[1]["model"]
        assert model["net"] == "mnistlit.core.nets.Net"
        assert model["checkpoint"].startswith("version_0/checkpoints/best-"), "no folders of this machine"
        (best,) = (trained / "lightning_logs" / "version_0" / "checkpoints").glob("best-*.ckpt")
        assert model["unsure_below"] == torch.load(best, weights_only=True)["unsure_below"]
        with concurrent.futures.ThreadPoolExecutor(4) as clients:
            if busy:
                digits, _ = draw_digits(1000, seed=3)
                batch, kind = multipart([png(Image.fromarray(255 - d)) for d in digits])
                in_flight = [clients.submit(post, port, "/predict/batch", batch, kind) for _ in range(4)]
                time.sleep(1)
                assert not any(f.done() for f in in_flight)
            stopped_at = time.monotonic()
            server.send_signal(stop)
            stdout, stderr = server.communicate(timeout=10)
            took = time.monotonic() - stopped_at
            if busy:
                stopped = {"error": "the server stopped before this request was answered"}
                assert [f.result() for f in in_flight] == [(503, stopped)] * 4
    finally:
        server.kill()
    assert took < within, f"stopped after {took:.2f} s"
    assert server.returncode == 0, stderr[-3000:]
    assert stdout.strip().splitlines()[-1] == "mnistlit: server stopped"
    assert "Traceback" not in stderr
    assert not {"Seed set", "GPU available", "TPU available"} & {line[:13] for line in stderr.splitlines()}
    with socket.socket() as s:  # nothing listens there any more (a restarted server could bind it)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
    assert sorted(p.name for p in (trained / "lightning_logs").iterdir()) == ["version_0"], (
        "serve reserves no run"
    )
    print(f"stopped in {took:.2f} s")


def test_serve_without_its_extra_is_one_line_naming_it_before_any_checkpoint_is_read(
    workdir, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now fails, as without the extra
    result = cli(workdir, "serve", *CONFIGS, "--ckpt_path", "nowhere.ckpt")
    assert_one_clear_line(result, "serve needs the serve extra (uvicorn is missing)", "mnistlit[serve]")


def test_an_address_in_use_is_one_line_before_any_checkpoint_is_read(workdir) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # A process of its own, with a timeout: if the check failed, the server would run on.
        result = run_cli(
            workdir, "serve", *CONFIGS, "--ckpt_path", "nowhere.ckpt", "--port", str(port), timeout=60
        )
    assert_one_clear_line(result, f"cannot listen on 127.0.0.1:{port}", "in use")


def multipart(files: list[bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body of PNG files, and its content type."""
    boundary = "mnistlit-test-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{i}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for i, data in enumerate(files)
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.mark.slow
def test_health_answers_at_once_while_a_large_batch_and_large_images_are_in_flight(trained: Path) -> None:
    digits, _ = draw_digits(1000, seed=3)
    batch, batch_kind = multipart([png(Image.fromarray(255 - d).resize((56, 56))) for d in digits])
    large = png(draw_seven(size=(6300, 6300), origin=(2000, 1000)))  # 40 MP: under the cap
    server = start_cli(trained, "serve", *CONFIGS, "--ckpt_path", "best", "--port", "0")
    try:
        line = server.stdout.readline()
        port = int(line.split("127.0.0.1:")[1].split()[0])
        with concurrent.futures.ThreadPoolExecutor(17) as clients:
            batch_done = clients.submit(post, port, "/predict/batch", batch, batch_kind)
            time.sleep(0.5)  # the batch is being worked through
            large_done = [clients.submit(post, port, "/predict", large, "image/png") for _ in range(16)]
            waits = []
            while not all(f.done() for f in large_done) or len(waits) < 20:
                started = time.perf_counter()
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
                    assert r.status == 200
                waits.append(time.perf_counter() - started)
                time.sleep(0.05)
            slowest, median = max(waits) * 1000, statistics.median(waits) * 1000
            assert slowest < 100, f"/health waited {slowest:.0f} ms (median {median:.0f} ms)"
            assert [f.result()[0] for f in large_done] == [200] * 16
            assert not batch_done.done(), "the batch was still in flight the whole time"
            status = Path(f"/proc/{server.pid}/status").read_text()
            peak_mb = int(status.split("VmHWM:")[1].split()[0]) / 1024
            server.send_signal(signal.SIGTERM)
    finally:
        server.kill()
        server.communicate()
    assert peak_mb < MAX_SERVER_MB, f"peak RSS {peak_mb:.0f} MB"
    print(f"/health slowest {slowest:.1f} ms, median {median:.1f} ms; peak RSS {peak_mb:.0f} MB")


@pytest.mark.slow
def test_a_chunked_upload_over_the_limit_is_cut_off(trained: Path) -> None:
    server = start_cli(trained, "serve", *CONFIGS, "--ckpt_path", "best", "--port", "0")
    try:
        port = int(server.stdout.readline().split("127.0.0.1:")[1].split()[0])
        sent, chunk = 0, b"x" * 65536
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            try:
                while sent < 200_000_000:
                    connection.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                answer = connection.recv(65536)
        assert sent < 50_000_000, f"the server took {sent / 1e6:.0f} MB after its 5 MB limit"
        assert answer.startswith(b"HTTP/1.1 413") or answer == b"", answer[:200]
    finally:
        server.kill()
        server.communicate()
