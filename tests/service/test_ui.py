"""The demo page at /ui: a real headless Chromium drives it against a real `bentoml serve`.

The server runs with GANFORGE_AUTH_TOKEN set, so the same run checks that the
page loads without the token and that its token field unlocks the API. The
browser is Debian's chromium (`make browser` installs it); Playwright only
drives it (no `playwright install`). Every request the page makes is
intercepted: anything not on the server's origin is recorded and aborted.

Screenshots go to pytest's tmp folder only. docs/ui.png, the README's picture,
shows the shipped models, not these fixtures: `python docs/ui_screenshot.py`
takes it.
"""

from __future__ import annotations

import base64
import io
import os
import re
import socket
from pathlib import Path

import httpx
import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from service_fixtures import encode, running_server, synthetic_photo, write_fixture_models


REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("GANFORGE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TOKEN = "ui-test-token"
RUN_TIMEOUT_MS = 60_000

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Base URL of `bentoml serve` on the fixture models, with a bearer token required."""
    tmp = tmp_path_factory.mktemp("ui_server")
    write_fixture_models(tmp / "models")
    with running_server(tmp / "models", tmp, GANFORGE_DEVICE="cpu", GANFORGE_AUTH_TOKEN=TOKEN,
                        GANFORGE_ORT_THREADS="1") as (base, _log):
        yield base


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"no browser: {CHROMIUM} is missing (`make browser` installs Debian's chromium; "
                    "it needs apt-get and root)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


class PageUnderTest:
    """A browser page on /ui whose every request is checked against the server's origin."""

    def __init__(self, browser, base: str, viewport=(1280, 860)) -> None:
        self.base = base
        self.requests: list[str] = []
        self.foreign: list[str] = []
        self.context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]},
                                           accept_downloads=True)
        self.context.on("request", lambda request: self.requests.append(request.url))  # redirects too
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.set_default_timeout(RUN_TIMEOUT_MS)

    def _route(self, route) -> None:
        url = route.request.url
        if url == self.base or url.startswith(self.base + "/"):
            route.continue_()
        else:
            self.foreign.append(url)
            route.abort()

    def open(self) -> None:
        self.page.goto(f"{self.base}/ui")

    def unlock(self) -> None:
        self.page.get_by_label("Bearer token").fill(TOKEN)
        self.page.get_by_label("Bearer token").press("Enter")
        expect(self.page.locator("#model option[value='fashion-dcgan']")).to_have_count(1)

    def endpoint(self, name: str) -> None:
        self.page.get_by_role("radio", name=name).check()

    def run(self) -> None:
        """Press Run and wait until the page says how it went."""
        self.page.get_by_role("button", name="Run").click()
        expect(self.page.locator("#status")).to_have_text(re.compile(r"^(Done|/\w+ refused)"))

    def output_size(self) -> tuple[int, int]:
        img = self.page.locator("#output-img")
        expect(img).to_be_visible()
        return tuple(img.evaluate("i => [i.naturalWidth, i.naturalHeight]"))

    def meta(self, name: str) -> str:
        return self.page.locator("#meta dt", has_text=re.compile(f"^{re.escape(name)}$")) \
            .locator("xpath=following-sibling::dd[1]").inner_text()

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def ui(browser, server):
    """One page, loaded without the token (it must load) and then unlocked through its field."""
    page = PageUnderTest(browser, server)
    page.open()
    expect(page.page.locator("#error")).to_contain_text("missing or wrong bearer token")
    expect(page.page.locator("#status")).to_contain_text("needs a bearer token")
    page.unlock()
    yield page
    page.close()


def _raw_get(base: str, path: str) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _pixels(data: bytes) -> tuple[tuple[int, int], bytes]:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.size, img.convert("RGBA").tobytes()


def _same_pixels(a: bytes, b: bytes) -> bool:
    return _pixels(a) == _pixels(b)


# ------------------------------------------------------------------ plain HTTP


def test_page_is_served_open_and_the_docs_still_work(server, http):
    with httpx.Client(base_url=server, timeout=30) as anon:  # no token
        redirect = anon.get("/ui")
        assert redirect.status_code == 307 and redirect.headers["location"] == "ui/"
        page = anon.get("/ui", follow_redirects=True)
        assert page.status_code == 200 and str(page.url) == f"{server}/ui/"
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text), "the page links outside"
        for name, media_type in (("app.js", "text/javascript"), ("app.css", "text/css")):
            resp = anon.get(f"/ui/{name}")
            assert resp.status_code == 200 and resp.headers["content-type"].startswith(media_type)
            assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", resp.text), name
        missing = anon.get("/ui/secret.txt")
        assert missing.status_code == 404 and missing.json() == {"error": "no such file under /ui/", "status": 404}
        assert anon.post("/ui/", content=b"x").json()["status"] == 405
        assert anon.get("/models").status_code == 401  # the data stays behind the token
        for sneaky in ("/ui/../models", "/ui/%2e%2e/models", "/ui//models"):  # sent as is, not normalised
            assert _raw_get(server, sneaky).split(b"\r\n", 1)[0] in (b"HTTP/1.1 404 Not Found",
                                                                   b"HTTP/1.1 401 Unauthorized"), sneaky
        assert anon.get("/livez").status_code == 200

    swagger = http.get("/")
    assert swagger.status_code == 200 and "swagger" in swagger.text.lower()
    paths = http.get("/docs.json").json()["paths"]
    assert {"/generate", "/translate", "/upscale"} <= set(paths)
    assert http.get("/models").json()["models"]


# ------------------------------------------------------------------ the browser


def test_models_and_cards(ui):
    page = ui.page
    expect(page.locator("#device")).to_contain_text("4 model(s)")
    ui.endpoint("generate")
    expect(page.locator("#card")).to_contain_text("fixture conditional generator")
    expect(page.locator("#card .badge")).to_have_text("ready")
    expect(page.locator("#card")).to_contain_text("T-shirt/top, Trouser")
    ui.endpoint("translate")
    expect(page.locator("#model option")).to_have_text(["edges2color", "shoe2boot"])
    page.get_by_label("Model", exact=True).select_option("shoe2boot")
    expect(page.locator("#card")).to_contain_text("a: sneaker, b: ankle boot")
    expect(page.get_by_label("Direction").locator("option")).to_have_text(
        ["a2b: sneaker → ankle boot", "b2a: ankle boot → sneaker"])
    ui.endpoint("upscale")
    expect(page.locator("#model option")).to_have_text(["srresnet-x4"])
    expect(page.locator("#card")).to_contain_text("×4")


def test_generate(ui, http, tmp_path):
    page = ui.page
    ui.endpoint("generate")
    page.get_by_label("Model", exact=True).select_option("fashion-dcgan")
    page.get_by_label("Class").select_option(label="7: Sneaker")
    page.get_by_label("Seed", exact=True).fill("1234")
    page.get_by_label("Images (n)").fill("1")
    ui.run()
    card = next(m for m in http.get("/models").json()["models"] if m["name"] == "fashion-dcgan")
    h, w = card["output"]["size"]
    assert ui.output_size() == (w, h)
    assert ui.meta("X-Seed") == "1234" and ui.meta("X-Model") == "fashion-dcgan"
    assert "7 Sneaker" in ui.meta("X-Labels")
    assert re.fullmatch(r"\d+ ms \(request to last byte\)", ui.meta("time"))
    assert ui.meta("output").startswith(f"{w}×{h} image/png")
    expect(page.locator("#request")).to_contain_text('"seed":1234')
    direct = http.post("/generate", json={"model": "fashion-dcgan", "label": 7, "seed": 1234})
    assert page.locator("#download").get_attribute("download") == "ganforge-generate-fashion-dcgan-seed1234.png"
    with page.expect_download() as download:
        page.get_by_role("link", name="Download the result").click()
    assert _same_pixels(Path(download.value.path()).read_bytes(), direct.content)

    page.get_by_role("button", name="New random seed", exact=True).click()
    assert page.get_by_label("Seed", exact=True).input_value() != "1234"
    page.get_by_label("Seed", exact=True).fill("1234")
    page.get_by_label("Images (n)").fill("4")
    ui.run()
    assert ui.output_size() == (2 * w, 2 * h)  # a 2x2 grid
    assert ui.meta("X-Labels").startswith("7,7,7,7")

    page.get_by_label("Interpolation strip").check()
    page.get_by_label("Seed B", exact=True).fill("99")
    page.get_by_label("Steps", exact=True).fill("5")
    ui.run()
    assert ui.output_size() == (5 * w, h)  # a 1 x 5 strip
    assert ui.meta("X-Seed") == "1234,99"
    page.get_by_label("Zoom").select_option("4")
    assert page.locator("#output-img").evaluate("i => i.getBoundingClientRect().width") == 4 * 5 * w
    page.screenshot(path=tmp_path / "ui-generate.png", full_page=True)
    page.get_by_label("Zoom").select_option("1")
    page.get_by_label("Interpolation strip").uncheck()


def test_translate(ui, tmp_path):
    page = ui.page
    ui.endpoint("translate")
    page.get_by_label("Model", exact=True).select_option("edges2color")
    photo = tmp_path / "photo-40x32.png"
    photo.write_bytes(encode(Image.fromarray(synthetic_photo(40, 32, seed=5))))
    page.get_by_label("choose a file").set_input_files(photo)
    expect(page.locator("#input-meta")).to_contain_text("40×32")
    ui.run()
    assert ui.output_size() == (40, 32)
    assert ui.meta("X-Model") == "edges2color"

    page.get_by_label("Model", exact=True).select_option("shoe2boot")  # native 28x28: resized there and back
    page.get_by_label("Direction").select_option("b2a")
    ui.run()
    assert ui.output_size() == (40, 32)
    page.get_by_label("choose a file").set_input_files(REPO / "samples" / "sneaker-28.png")
    page.get_by_label("Direction").select_option("a2b")
    ui.run()
    assert ui.output_size() == (28, 28)
    page.screenshot(path=tmp_path / "ui-translate.png", full_page=True)


def test_upscale_by_drag_and_drop(ui, tmp_path):
    page = ui.page
    ui.endpoint("upscale")
    sample = REPO / "samples" / "raindrops-128.png"
    page.evaluate("""([name, b64]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type: 'image/png'}));
        document.getElementById('drop').dispatchEvent(
            new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""", [sample.name, base64.b64encode(sample.read_bytes()).decode()])
    expect(page.locator("#input-meta")).to_contain_text("128×128, raindrops-128.png")
    ui.run()
    assert ui.output_size() == (512, 512)  # x4
    assert ui.meta("X-Model") == "srresnet-x4"
    width = "i => i.getBoundingClientRect().width"
    assert page.locator("#input-img").evaluate(width) == 128  # true size
    assert page.locator("#output-img").evaluate(width) == 512
    assert page.locator("#output-img").evaluate("i => getComputedStyle(i).imageRendering") == "pixelated"
    page.get_by_label("Zoom").select_option("2")
    assert page.locator("#output-img").evaluate(width) == 1024
    page.get_by_label("Show the input at the output's size").check()
    assert page.locator("#input-img").evaluate(width) == 1024
    page.get_by_label("Show the input at the output's size").uncheck()
    page.get_by_label("Zoom").select_option("1")
    assert page.locator("#input-img").evaluate(width) == 128
    page.screenshot(path=tmp_path / "ui-upscale.png", full_page=True)


def test_bad_input_shows_the_json_error(ui, http, tmp_path):
    page = ui.page
    ui.endpoint("upscale")
    garbage = tmp_path / "not-an-image.png"
    garbage.write_bytes(b"this is not an image, just bytes \x00\x01\x02" * 4)
    page.get_by_label("choose a file").set_input_files(garbage)
    expect(page.locator("#input-meta")).to_contain_text("the browser cannot show it")
    ui.run()
    direct = http.post("/upscale", files={"image": (garbage.name, garbage.read_bytes(), "image/png")})
    assert direct.status_code == 400
    expect(page.locator("#error")).to_have_text(f"Error 400: {direct.json()['error']}")
    expect(page.locator("#output-img")).to_be_hidden()
    expect(page.get_by_role("link", name="Download the result")).to_be_hidden()
    page.screenshot(path=tmp_path / "ui-error.png", full_page=True)

    ui.endpoint("generate")  # a value the server refuses (422), and one the page refuses itself
    page.get_by_label("Images (n)").fill("0")
    ui.run()
    expect(page.locator("#error")).to_have_text("Error 422: n must be 1..64, got 0")
    page.get_by_label("Images (n)").fill("1")
    page.get_by_label("Seed", exact=True).fill("twelve")
    page.get_by_role("button", name="Run").click()
    expect(page.locator("#error")).to_contain_text("seed must be a whole number")
    page.get_by_label("Seed", exact=True).fill("7")


def test_keyboard_and_labels(ui):
    page = ui.page
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, button')]
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
        .map(e => e.id || e.outerHTML)""")
    assert unlabelled == []
    ui.endpoint("generate")
    page.get_by_role("radio", name="generate").focus()
    page.keyboard.press("ArrowRight")  # radios: arrow keys move the choice
    expect(page.get_by_role("radio", name="translate")).to_be_checked()
    expect(page.locator("#model option").first).to_have_text("edges2color")
    page.keyboard.press("ArrowLeft")
    expect(page.get_by_role("radio", name="generate")).to_be_checked()
    seed = page.get_by_label("Seed", exact=True)
    seed.fill("31")
    seed.press("Enter")  # submits the form
    expect(page.locator("#status")).to_have_text(re.compile("^Done"))
    assert ui.meta("X-Seed") == "31"


def test_image_runs_are_jobs_and_a_reload_finds_the_running_job(ui, http):
    """translate and upscale go through `Prefer: respond-async` and /jobs; the page keeps its job in
    localStorage, so a reload follows it to its result."""
    page = ui.page
    assert any("/jobs/" in u for u in ui.requests), "the earlier upscale/translate runs were not jobs"
    sample = (REPO / "samples" / "raindrops-128.png").read_bytes()
    job = http.post("/upscale", headers={"Prefer": "respond-async"}, files={"image": ("r.png", sample, "image/png")},
                    data={"model": "srresnet-x4"}).json()
    saved = {"id": job["id"], "endpoint": "upscale", "model": "srresnet-x4", "submitted": 0, "curl": []}
    page.evaluate("(saved) => localStorage.setItem('ganforge.job', JSON.stringify(saved))", saved)
    page.reload()
    expect(page.locator("#status")).to_have_text(re.compile("^Done"))
    expect(page.get_by_role("radio", name="upscale")).to_be_checked()
    assert ui.output_size() == (512, 512) and ui.meta("X-Model") == "srresnet-x4"
    assert page.evaluate("() => localStorage.getItem('ganforge.job')") is None
    assert page.locator("#job-progress").evaluate("p => p.value") == 1
    expect(page.locator("#card")).to_contain_text("export parity")


def test_wrong_token_and_only_own_origin(ui, browser, server):
    fresh = PageUnderTest(browser, server)
    try:
        fresh.open()
        expect(fresh.page.locator("#error")).to_contain_text("Error 401: missing or wrong bearer token")
        fresh.page.get_by_label("Bearer token").fill("wrong")
        fresh.page.get_by_role("button", name="Use token").click()
        expect(fresh.page.locator("#error")).to_contain_text("Error 401")
        expect(fresh.page.get_by_role("button", name="Run")).to_be_disabled()
        fresh.unlock()
        expect(fresh.page.locator("#error")).to_be_hidden()
        paths = {u[len(server):].split("?")[0] for u in fresh.requests}
        assert paths == {"/ui", "/ui/", "/ui/app.css", "/ui/app.js", "/models"}, paths
        assert fresh.foreign == []
    finally:
        fresh.close()
    assert ui.requests and ui.foreign == []  # everything the long-lived page did, over all the tests
