"""The page of ``mnistlit serve`` in a real browser: Debian's Chromium driven by Playwright.

Digits are drawn with the mouse along scripted strokes, in the seven-segment style of the
synthetic training digits (tests/conftest.py), so a model trained here for a few seconds
reads them. Set MNISTLIT_SERVE_SCREENSHOT to a path to keep the page's screenshot there
(docs/serve.png in the README is one). The empty, dot and error states are screenshotted into
each test's tmp_path."""

import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.helpers import (
    CONFIGS,
    cli,
    draw_digits,
    png_header_only,
    start_cli,
    tiny_config,
    write_synthetic_mnist,
)

CHROMIUM = next(
    (
        path
        for path in ("/usr/lib/chromium/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
        if path and Path(path).exists()
    ),
    None,
)


STROKES = {
    "1": [[(180, 40), (180, 240)]],
    "7": [[(90, 40), (190, 40), (190, 240)]],
    "0": [[(90, 40), (190, 40), (190, 240), (90, 240), (90, 40)]],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("served")
    tiny_config(workdir, write_synthetic_mnist(workdir / "data" / "mnist"), max_epochs=4)
    fitted = cli(workdir, "fit", *CONFIGS, "--model.lr_scheduler.init_args.T_max", "4")
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    process = start_cli(workdir, "serve", *CONFIGS, "--ckpt_path", "best", "--port", "0")
    line = process.stdout.readline()
    assert line.startswith("serving on http://127.0.0.1:"), line + process.stderr.read()[-3000:]
    yield line.split()[2], workdir
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)


@pytest.fixture
def page(server):
    from playwright.sync_api import sync_playwright

    url, _ = server
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 760, "height": 720})
        page.goto(url)
        yield page
        browser.close()


def draw(page, strokes: list[list[tuple[int, int]]]) -> None:
    box = page.locator("#canvas").bounding_box()
    scale = box["width"] / 280
    for stroke in strokes:
        (x, y), *rest = stroke
        page.mouse.move(box["x"] + x * scale, box["y"] + y * scale)
        page.mouse.down()
        for x, y in rest:
            page.mouse.move(box["x"] + x * scale, box["y"] + y * scale, steps=12)
        page.mouse.up()


def newest_answer(page, requests: list) -> dict:
    """The answer to the page's newest /predict request, the only one it shows.

    The page asks 120 ms after the pen last moved, also while a stroke is drawn, so a slow
    machine sends partial drawings too (a first short stroke can be a "dot" 422): wait until
    no request has followed for half a second, then read the last one's answer."""
    count = -1
    while count != len(requests):
        count = len(requests)
        page.wait_for_timeout(500)
    return requests[-1].response().json()


def test_drawn_digits_are_read_and_shown_with_what_the_network_saw(page, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#model")).to_contain_text("mnistlit.core.nets.Net · mnist (10 classes)")
    requests: list = []
    page.on("request", lambda request: requests.append(request) if request.url.endswith("/predict") else None)
    for digit, strokes in STROKES.items():
        page.click("#clear")
        expect(page.locator("#digit")).to_have_text("–")
        draw(page, strokes)
        expect(page.locator("#digit")).to_have_text(digit, timeout=10_000)
        answer = newest_answer(page, requests)
        assert answer["label"] == digit
        unsure = answer["unsure"]
        assert isinstance(unsure, bool), "the served checkpoint has its threshold"
        badge = expect(page.locator("#unsure"))
        badge.to_be_visible() if unsure else badge.to_be_hidden()
        expect(page.locator("#bars .bar")).to_have_count(10)
        expect(page.locator("#bars .bar.best .name")).to_have_text(digit)
        assert page.locator("#seen").get_attribute("src").startswith("data:image/png;base64,")
    page.screenshot(path=os.environ.get("MNISTLIT_SERVE_SCREENSHOT") or str(tmp_path / "serve.png"))

    page.click("#undo")  # the 0 was one stroke: nothing left to read
    expect(page.locator("#digit")).to_have_text("–")
    expect(page.locator("#bars .bar")).to_have_count(0)

    def flagged(route) -> None:  # the server's own answer, flagged as for a doubtful digit
        answer = route.fetch()
        route.fulfill(response=answer, json={**answer.json(), "unsure": True})

    page.route("**/predict", flagged)
    draw(page, STROKES["7"])
    expect(page.locator("#unsure")).to_be_visible(timeout=10_000)
    expect(page.locator("#unsure")).to_have_text("unsure")
    page.click("#clear")
    expect(page.locator("#unsure")).to_be_hidden()


def test_an_uploaded_photo_is_read_and_a_bad_file_is_one_message(page, server, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    images, labels = draw_digits(40, seed=11)
    index = next(i for i, label in enumerate(labels) if label == 7)
    from PIL import Image

    Image.fromarray(255 - images[index]).resize((280, 280)).save(tmp_path / "seven.png")  # dark ink on paper
    page.set_input_files("#file", str(tmp_path / "seven.png"))
    expect(page.locator("#digit")).to_have_text("7", timeout=10_000)
    page.click("#clear")
    expect(page.locator("#digit")).to_have_text("–")
    page.set_input_files("#file", str(tmp_path / "seven.png"))  # the same photo again is read again
    expect(page.locator("#digit")).to_have_text("7", timeout=10_000)

    (tmp_path / "bomb.png").write_bytes(png_header_only(20_000, 20_000))
    page.set_input_files("#file", str(tmp_path / "bomb.png"))
    expect(page.locator("#status")).to_contain_text("pixels")
    expect(page.locator("#digit")).to_have_text("–")
    assert_no_broken_image(page)
    page.screenshot(path=tmp_path / "error.png")


def assert_no_broken_image(page) -> None:
    """With no answer, the 28×28 box is black: no broken-image icon or alt text over it."""
    from playwright.sync_api import expect

    expect(page.locator("#seen")).to_be_hidden()
    assert page.locator("#seen").get_attribute("src") is None


def test_the_empty_page_and_a_dot_show_no_broken_image_and_a_dot_asks_for_a_digit(
    page, server, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    url, workdir = server
    expect(page.locator("#model")).to_contain_text(" · version_0/checkpoints/best-")
    assert str(workdir) not in page.locator("#model").inner_text(), "no folders of the server's machine"
    assert_no_broken_image(page)
    page.screenshot(path=tmp_path / "empty.png")

    draw(page, [[(140, 140)]])  # one tap
    expect(page.locator("#status")).to_have_text("too little ink to be a digit (a dot?): draw a digit")
    expect(page.locator("#digit")).to_have_text("–")
    assert_no_broken_image(page)
    page.screenshot(path=tmp_path / "dot.png")

    draw(page, STROKES["7"])  # the dot and a 7: read as the 7
    expect(page.locator("#digit")).to_have_text("7", timeout=10_000)
    expect(page.locator("#seen")).to_be_visible()
    page.click("#clear")
    expect(page.locator("#digit")).to_have_text("–")
    assert_no_broken_image(page)


def test_the_api_docs_work_offline_and_send_an_image(server, tmp_path: Path) -> None:
    """/docs with the network off: Swagger UI comes from the package, and its form uploads a photo."""
    from playwright.sync_api import expect, sync_playwright

    url, _ = server
    outside: list[str] = []

    def network_off(route) -> None:  # everything but the server itself fails, as offline
        if route.request.url.startswith(url + "/"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    images, labels = draw_digits(40, seed=11)
    from PIL import Image

    Image.fromarray(255 - images[labels.tolist().index(7)]).resize((280, 280)).save(tmp_path / "seven.png")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1100, "height": 1400})
        context.route("**/*", network_off)
        page = context.new_page()
        page.goto(url + "/docs")
        operation = page.locator("#operations-default-predict_predict_post")
        operation.locator(".opblock-summary").click()
        operation.get_by_role("button", name="Try it out").click()
        operation.locator(".body-param-content-type select").select_option("multipart/form-data")
        operation.locator("input[type=file]").set_input_files(str(tmp_path / "seven.png"))
        operation.get_by_role("button", name="Execute").click()
        answer = operation.locator(".live-responses-table .response .response-col_description pre")
        expect(answer.first).to_contain_text('"label": "7"', timeout=10_000)
        expect(operation.locator(".live-responses-table .response .response-col_status").first).to_have_text(
            "200"
        )
        page.screenshot(path=tmp_path / "docs.png", full_page=True)
        browser.close()
    assert outside == [], "the docs page asked for nothing beyond the server"
