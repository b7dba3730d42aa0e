"""``mnistlit serve``: a page to draw a digit on and a JSON API, on FastAPI + uvicorn, in one process."""

import asyncio
import base64
import binascii
import io
import json
import os
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mnistlit.core.errors import MnistlitError, one_line
from mnistlit.core.inputs import DigitProbabilities
from mnistlit.core.module import LitClassifier
from mnistlit.deploy.images import MAX_IMAGE_PIXELS, allow_pixels, preprocess_image

MAX_UPLOAD_BYTES = 5_000_000
# What a client may hold: a connection sends its request headers within HEADER_SECONDS and its
# body within BODY_SECONDS, an idle keep-alive connection closes after KEEP_ALIVE_SECONDS, and
# beyond MAX_CONNECTIONS open at once a new one is answered 503. A browser or curl needs
# milliseconds for each; a client sending a byte a second would otherwise hold a connection forever.
HEADER_SECONDS = 10
BODY_SECONDS = 60
KEEP_ALIVE_SECONDS = 5
MAX_CONNECTIONS = 256


class Rejected(Exception):
    """A request the server answers with a 4xx JSON error instead of a prediction."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Stopping(Rejected):
    """The server was stopped while it worked on this request: the 503 a client may retry."""

    def __init__(self) -> None:
        super().__init__(503, "the server stopped before this request was answered")


@dataclass
class Classifier:
    """A network in eval mode with what a client needs to read its answers."""

    model: LitClassifier
    class_names: list[str]
    info: dict
    max_pixels: int = MAX_IMAGE_PIXELS
    unsure_below: float | None = None  # answers less probable are flagged unsure (runs/unsure.py)

    def __post_init__(self) -> None:
        allow_pixels(self.max_pixels)
        self.model.eval()
        self.device = next(self.model.parameters()).device
        self.probabilities = DigitProbabilities(self.model.net).eval()

    def decode(self, data: bytes) -> Image.Image:
        """The image in ``data``, its size checked against ``max_pixels`` before it is decoded."""
        if not data:
            raise Rejected(400, "the request holds no image")
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as e:  # its message is the repr of our buffer
            raise Rejected(422, "not an image that can be read (PNG, JPEG, GIF, BMP, TIFF or WebP)") from e
        except Image.DecompressionBombError as e:  # over twice Pillow's own limit: refused before ours
            raise Rejected(422, f"the image is over the limit of {self.max_pixels:,} pixels") from e
        except OSError as e:
            raise Rejected(422, f"not an image that can be read: {one_line(e, 200)}") from e
        if image.width * image.height > self.max_pixels:
            raise Rejected(
                422, f"{image.width}x{image.height} is over the limit of {self.max_pixels:,} pixels"
            )
        return image

    @torch.inference_mode()
    def predict(self, data: bytes) -> dict:
        try:
            digit = preprocess_image(self.decode(data))
        except (ValueError, OSError) as e:
            raise Rejected(422, one_line(e, 200)) from e
        probabilities = self.probabilities(digit[None].to(self.device))[0].float().cpu()
        best = int(probabilities.argmax())
        return {
            "digit": best,
            "label": self.class_names[best],
            "probability": float(probabilities[best]),
            "unsure": None if self.unsure_below is None else bool(probabilities[best] < self.unsure_below),
            "probabilities": [round(float(p), 6) for p in probabilities],
            "classes": self.class_names,
            "input_28x28": png_data_url(digit.numpy()),
        }


def png_data_url(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_from_data_url(value: object) -> bytes:
    """The bytes of ``data:image/...;base64,...`` (or of plain base64)."""
    if not isinstance(value, str):
        raise Rejected(400, 'give the image as a string: {"image": "data:image/png;base64,..."}')
    encoded = value
    if value.startswith("data:"):
        _, comma, encoded = value.partition(",")
        if not comma:
            raise Rejected(400, 'the data URL has no comma before its data: "data:image/png;base64,..."')
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as e:
        raise Rejected(400, "the image is not valid base64") from e


async def _as_stream(body: bytes):
    """The body, already read and size-checked, as the stream Starlette's form parser reads."""
    yield body


def files_in_multipart(headers, body: bytes) -> list[bytes]:
    """The files of a multipart body, parsed by Starlette's parser (in a worker thread: parsing a
    thousand files is CPU work that must not hold up the event loop)."""
    import anyio
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def parse() -> list[bytes]:
        form = await MultiPartParser(headers, _as_stream(body)).parse()
        return [await item.read() for _, item in form.multi_items() if hasattr(item, "read")]

    try:
        return anyio.run(parse)
    except MultiPartException as e:
        raise Rejected(400, f"the multipart body cannot be read: {one_line(e, 100)}") from e


def images_in_json(body: bytes) -> list[bytes]:
    """The images of a JSON body: ``{"image": "data:..."}`` or ``{"images": [...]}``."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Rejected(400, f"the body is not valid JSON: {one_line(e, 100)}") from e
    except RecursionError as e:
        raise Rejected(400, "the JSON is nested too deeply") from e
    if not isinstance(payload, dict) or not ({"image", "images"} & payload.keys()):
        raise Rejected(400, 'give {"image": "data:image/png;base64,..."} or {"images": [...]}')
    values = payload["images"] if "images" in payload else [payload["image"]]
    if not isinstance(values, list):
        raise Rejected(400, '"images" must be a list')
    return [image_from_data_url(value) for value in values]


def request_body(field: str) -> dict:
    """The OpenAPI request body of ``/predict`` (``field`` "image") or ``/predict/batch`` ("images"):
    the handlers read the body themselves, so FastAPI cannot infer it, and without it the docs
    page has no way to send an image."""
    many = field == "images"
    file = {"type": "string", "format": "binary"}
    data_url = {"type": "string", "description": "a data URL (data:image/png;base64,...) or base64"}
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {field: {"type": "array", "items": file} if many else file},
                    "required": [field],
                }
            },
            **({} if many else {kind: {"schema": file} for kind in ("image/png", "image/jpeg")}),
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {field: {"type": "array", "items": data_url} if many else data_url},
                    "required": [field],
                }
            },
        },
    }


def create_app(classifier: Classifier, max_upload_bytes: int = MAX_UPLOAD_BYTES):
    """The FastAPI application: the page (``GET /``, static/index.html), ``POST /predict``,
    ``POST /predict/batch``, ``GET /health``."""
    import anyio
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException

    # FastAPI's /docs loads Swagger UI from a CDN and /redoc web fonts: blank pages offline. The
    # docs page is served from files in the package instead (FastAPI's "self-hosting" recipe,
    # swagger-ui-dist pinned in package.json); /redoc is off.
    app = FastAPI(
        title="mnistlit",
        description="Digits classified by a model trained with mnistlit.",
        docs_url=None,
        redoc_url=None,
    )
    app.mount("/static/swagger-ui", StaticFiles(packages=[("mnistlit.deploy", "static/swagger-ui")]))

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="openapi.json",
            title="mnistlit API",
            swagger_js_url="static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="static/swagger-ui/favicon-32x32.png",
        )

    @app.exception_handler(Rejected)
    async def rejected(request: Request, error: Rejected) -> JSONResponse:
        # After a 413 or a 408 the rest of the body is not wanted: closing the connection stops
        # the client's upload (a chunked one has no length to refuse up front).
        closing = {"connection": "close"} if error.status in (408, 413) else None
        return JSONResponse({"error": str(error)}, status_code=error.status, headers=closing)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": one_line(error)}, status_code=422)

    async def body_of(request: Request) -> bytes:
        """The request body, read no further than ``max_upload_bytes``."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload_bytes:
            raise Rejected(413, f"the upload is larger than {max_upload_bytes:,} bytes")
        body = bytearray()
        try:
            with anyio.fail_after(BODY_SECONDS):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > max_upload_bytes:
                        raise Rejected(413, f"the upload is larger than {max_upload_bytes:,} bytes")
        except TimeoutError:
            raise Rejected(408, f"the upload took longer than {BODY_SECONDS} s") from None
        return bytes(body)

    # Decoding, preprocessing and the network run in worker threads, as many at once as there
    # are cores; the event loop only moves bytes, so /health and new connections never wait for
    # a large batch or a large image, and a burst of large images queues instead of each one
    # holding its decoded pixels in memory at the same time.
    workers = anyio.CapacityLimiter(os.cpu_count() or 1)

    async def in_worker(function, *args):
        try:
            return await anyio.to_thread.run_sync(function, *args, limiter=workers)
        except asyncio.CancelledError:  # a stop: uvicorn cancels what is still running after a second
            raise Stopping() from None

    async def images_in(request: Request) -> list[bytes]:
        """Every image of a request: multipart files, a JSON ``image``/``images``, or the raw body."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await body_of(request)
        if kind == "multipart/form-data":
            return await in_worker(files_in_multipart, request.headers, body)
        if kind == "application/json":
            return await in_worker(images_in_json, body)
        if kind.startswith("image/") or kind == "application/octet-stream":
            return [body]
        raise Rejected(
            415, f"send an image (image/png, image/jpeg, ...), multipart or JSON, not {kind or 'nothing'}"
        )

    @app.post("/predict", openapi_extra={"requestBody": request_body("image")})
    async def predict(request: Request) -> dict:
        images = await images_in(request)
        if len(images) != 1:
            raise Rejected(400, f"/predict takes one image, got {len(images)} (use /predict/batch)")
        return await in_worker(classifier.predict, images[0])

    @app.post("/predict/batch", openapi_extra={"requestBody": request_body("images")})
    async def predict_batch(request: Request) -> list[dict]:
        results = []
        for data in await images_in(request):  # one image a turn: other requests go in between
            try:
                results.append(await in_worker(classifier.predict, data))
            except Stopping:
                raise
            except Rejected as e:
                results.append({"error": str(e)})
        return results

    page = (resources.files("mnistlit.deploy") / "static" / "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def draw_a_digit() -> str:
        return page

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": classifier.info}

    return app


def require_extra() -> None:
    """One line naming the ``serve`` extra when FastAPI, uvicorn or python-multipart is missing."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401

        try:
            import python_multipart  # noqa: F401
        except ImportError:  # python-multipart before 0.0.13 has only its old name
            import multipart  # noqa: F401
    except ImportError as e:
        raise MnistlitError(
            f"serve needs the serve extra ({e.name} is missing): pip install 'mnistlit[serve]'"
        ) from e


def check_address(host: str, port: int) -> None:
    """Fail now, in one line, if ``host:port`` cannot be listened on (in use, not this machine's)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise MnistlitError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e


def bounded_connections():
    """uvicorn's HTTP/1.1 protocol with the limits it lacks: a deadline for a request's headers
    (its keep-alive timer restarts on every byte received, and is not armed before the first
    request), and a JSON 503 instead of its plain-text one beyond ``MAX_CONNECTIONS``."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class BoundedConnection(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.header_deadline: asyncio.TimerHandle | None = None
            if len(self.connections) > MAX_CONNECTIONS:
                body = json.dumps({"error": f"the server has {MAX_CONNECTIONS} connections open; try again"})
                transport.write(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body.encode())
                )
                transport.close()
                return
            self.wait_for_headers()

        def on_response_complete(self) -> None:
            self.wait_for_headers()  # first: the call below may already read a pipelined request
            super().on_response_complete()

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:  # the request's headers have arrived
                self.stop_waiting()

        def connection_lost(self, exc: Exception | None) -> None:
            self.stop_waiting()
            super().connection_lost(exc)

        def wait_for_headers(self) -> None:
            self.stop_waiting()
            self.header_deadline = self.loop.call_later(HEADER_SECONDS, self.transport.close)

        def stop_waiting(self) -> None:
            if self.header_deadline is not None:
                self.header_deadline.cancel()
                self.header_deadline = None

    return BoundedConnection


def uvicorn_config(app):
    """The server's settings: the limits above, and at most a second for requests in flight at a stop."""
    import uvicorn

    return uvicorn.Config(
        app,
        http=bounded_connections(),
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=1,
        log_level="warning",
    )


def run(app, host: str, port: int) -> None:
    """Listen on ``host:port`` (0: a free port), print the address, serve until Ctrl-C or SIGTERM."""
    import signal
    import socket

    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: without it Nagle's algorithm holds the response body
    # back until the client's delayed ACK, ~40 ms a request on loopback.
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        listener.bind((host, port))
        listener.listen(2048)  # from here connections wait for uvicorn: the address printed below works
    except OSError as e:
        listener.close()
        raise MnistlitError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    bound = listener.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(
        f"serving on http://{shown}:{bound} (API docs: http://{shown}:{bound}/docs); Ctrl-C stops it",
        flush=True,
    )
    # Requests run side by side in worker threads, one per core, and a digit's network is too
    # small to gain from splitting across cores: one torch thread each serves more requests
    # (docs/serve.md: 188 -> 220 req/s with 16 clients on 2 cores).
    torch.set_num_threads(1)
    server = uvicorn.Server(uvicorn_config(app))
    # uvicorn shuts down gracefully on Ctrl-C or SIGTERM, then raises the same signal again for
    # the handler it found: ignored here, so that the stop ends with one line and exit code 0.
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {stop: signal.signal(stop, signal.SIG_IGN) for stop in stops}
    try:
        server.run(sockets=[listener])
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)
    print("mnistlit: server stopped", flush=True)
