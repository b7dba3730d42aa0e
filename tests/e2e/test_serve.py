"""mnistlit serve: the JSON API in-process (FastAPI's TestClient), and the real server in a subprocess."""

import base64
import io
import signal
import socket
import sys
import time
import urllib.request

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from mnistlit.core.module import LitClassifier
from mnistlit.deploy.serve import Classifier, create_app
from tests.helpers import CONFIGS, assert_one_clear_line, cli, draw_seven, png_header_only, run_cli, start_cli


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


SEVEN = png(draw_seven(size=(280, 280), origin=(90, 40)))


PNG = {"content-type": "image/png"}


@pytest.fixture(scope="module")
def client() -> TestClient:
    torch.manual_seed(0)
    classifier = Classifier(LitClassifier(), [str(d) for d in range(10)], {"net": "mnistlit.core.nets.Net"})
    return TestClient(create_app(classifier, max_upload_bytes=200_000))


def assert_a_prediction(answer: dict) -> None:
    assert set(answer) == {"digit", "label", "probability", "probabilities", "classes", "input_28x28"}
    assert answer["classes"] == [str(d) for d in range(10)] and answer["label"] == str(answer["digit"])
    assert abs(sum(answer["probabilities"]) - 1) < 1e-4
    assert answer["probability"] == pytest.approx(max(answer["probabilities"]), abs=1e-6)
    header, encoded = answer["input_28x28"].split(",", 1)
    assert header == "data:image/png;base64"
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as seen:
        assert seen.size == (28, 28)


def test_health_names_the_model(client: TestClient) -> None:
    answer = client.get("/health")
    assert answer.status_code == 200 and answer.json() == {
        "status": "ok",
        "model": {"net": "mnistlit.core.nets.Net"},
    }


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
        "content-type",
        "bad-json",
        "no-image-key",
        "base64",
        "data-url-without-comma",
        "deep-json",
    ],
)
def test_bad_input_is_a_4xx_json_error(client: TestClient, request_kwargs, status, phrase) -> None:
    answer = client.post("/predict", **request_kwargs)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error"} and phrase in answer.json()["error"]
    assert "object at 0x" not in answer.json()["error"], "no Python repr in a message for people"
    assert client.get("/health").status_code == 200, "the server keeps serving"


def test_the_server_stops_cleanly_on_sigterm_and_frees_its_port(workdir) -> None:
    fitted = cli(workdir, "fit", *CONFIGS, "--trainer.max_epochs", "1")
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    server = start_cli(workdir, "serve", *CONFIGS, "--ckpt_path", "best", "--port", "0")
    try:
        line = server.stdout.readline()
        assert line.startswith("serving on http://127.0.0.1:"), line + server.stderr.read()[-3000:]
        port = int(line.split("127.0.0.1:")[1].split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
            assert b'"net":"mnistlit.core.nets.Net"' in r.read()
        stopped_at = time.monotonic()
        server.send_signal(signal.SIGTERM)
        stdout, stderr = server.communicate(timeout=10)
    finally:
        server.kill()
    assert time.monotonic() - stopped_at < 2
    assert server.returncode == 0, stderr[-3000:]
    assert stdout.strip().splitlines()[-1] == "mnistlit: server stopped"
    assert "Traceback" not in stderr
    with socket.socket() as s:  # nothing listens there any more (a restarted server could bind it)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
    assert sorted(p.name for p in (workdir / "lightning_logs").iterdir()) == ["version_0"], (
        "serve reserves no run"
    )


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
