"""Take docs/ui.png, the README's picture of the demo page, from the shipped models.

Starts a real `bentoml serve` on --models (testkit.launcher.running_server),
opens /ui in Debian's headless chromium through Playwright (the browser and
launch arguments of tests/service/test_ui.py), and works the page's own controls: the
translate endpoint, the `colorize` model, the grayscale photo
samples/flower-gray-256.png, Run. Once the page shows the result it writes a
full-page PNG (1280x860 viewport) to --out, atomically (a temp file in the same
folder, then os.replace). `--demo upscale` shows srresnet-x4 on
samples/raindrops-128.png instead.

    .venv/bin/python docs/ui_screenshot.py [--models models] [--out docs/ui.png] [--demo colorize|upscale]

Re-run it whenever the shipped models change. Exits 2 with a message when
chromium is missing (`make browser` installs it), the server does not start,
or the page does not show a result.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # testkit.launcher, also without the editable install

from PIL import Image
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect, sync_playwright

from testkit.launcher import running_server

CHROMIUM = Path(os.environ.get("GANFORGE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [  # as tests/service/test_ui.py
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 860}
TIMEOUT_MS = 120_000
DEMOS = {  # name: (endpoint, model, input image)
    "colorize": ("translate", "colorize", REPO / "samples" / "flower-gray-256.png"),
    "upscale": ("upscale", "srresnet-x4", REPO / "samples" / "raindrops-128.png"),
}


class Failed(Exception):
    """The screenshot cannot be taken; the message says why."""


def drive_page(browser, base: str, endpoint: str, model: str, image: Path) -> bytes:
    """Run `model` on `image` through the page's controls; the full-page screenshot as PNG bytes."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"{base}/ui")
        expect(page.locator("#device")).to_contain_text("model(s)", timeout=TIMEOUT_MS)
        page.get_by_role("radio", name=endpoint).check()
        if page.locator(f"#model option[value='{model}']").count() != 1:
            raise Failed(f"the service lists no {endpoint} model {model!r} (is it in --models?)")
        page.get_by_label("Model", exact=True).select_option(model)
        expect(page.locator("#card .badge")).to_have_text("ready")
        page.get_by_label("choose a file").set_input_files(image)
        expect(page.locator("#input-meta")).to_contain_text("×")  # the browser decoded it
        page.get_by_role("button", name="Run").click()
        status = page.locator("#status")
        expect(status).to_have_text(re.compile(r"^(Done|/\w+ refused)"), timeout=TIMEOUT_MS)
        if not status.inner_text().startswith("Done"):
            raise Failed(f"the page says: {status.inner_text()} {page.locator('#error').inner_text()}")
        expect(page.locator("#output-img")).to_be_visible()
        if page.locator("#meta dd").first.inner_text() != model:  # X-Model
            raise Failed(f"X-Model is {page.locator('#meta dd').first.inner_text()!r}, not {model!r}")
        return page.screenshot(full_page=True)
    finally:
        context.close()


def write_atomically(png: bytes, out: Path) -> None:
    """A palette PNG (a quarter of the bytes), via a temp file next to `out` and os.replace."""
    shot = Image.open(io.BytesIO(png)).convert("RGB").quantize(256)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it 0600
        with os.fdopen(fd, "wb") as f:
            shot.save(f, format="PNG", optimize=True)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=REPO / "models", help="models folder to serve")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "ui.png", help="where the PNG goes")
    parser.add_argument("--demo", choices=sorted(DEMOS), default="colorize", help="what the page runs")
    args = parser.parse_args(argv)
    endpoint, model, image = DEMOS[args.demo]
    try:
        if not CHROMIUM.exists():
            raise Failed(f"no browser: {CHROMIUM} is missing (`make browser` installs Debian's chromium, "
                         "or set GANFORGE_CHROMIUM)")
        if not (args.models / model / "card.json").is_file():
            raise Failed(f"{args.models / model}/card.json is missing")
        with tempfile.TemporaryDirectory(prefix="ui-screenshot-") as tmp, \
                running_server(args.models.resolve(), Path(tmp)) as (base, _log), sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            try:
                png = drive_page(browser, base, endpoint, model, image)
            finally:
                browser.close()
        write_atomically(png, args.out)
    except (Failed, RuntimeError, PlaywrightError, AssertionError) as exc:
        print(f"ui_screenshot: failed: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({args.demo}: /{endpoint} with {model} on {image.relative_to(REPO)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
