"""A run's report and one executed notebook as a reader's browser shows them: headless
Chromium at a 1,400 px wide window, full-page screenshots, and two checks per page.

    .venv/bin/python bench/browser_check.py [report.html] [--out /tmp/browser_check]
        [--notebook <run>/notebooks/03_sdpo_vs_grpo.ipynb] [--width 1400]

Checks: the page is no wider than the window, its collapsed parts opened or not (nothing
scrolls sideways but a table's own box), and its rendered text shows no raw Markdown
(``**``, a code fence, a line starting ``- `` or ``# ``); code is left out of the second
check (fenced blocks, notebook code cells, program output), being verbatim by design.
Prints each page's size and one line per failure; exits 1 on any.

Needs Chromium and its driver (Debian: ``apt-get install -y chromium chromium-driver``) and
selenium (the ``dev`` extra). The screenshots are for a person to look at: taller pages are
saved in pieces of at most ``PIECE`` px.
"""

from __future__ import annotations

import argparse
import base64
import shutil
import sys
from pathlib import Path

RUNS = Path("runs/organism")
NOTEBOOK = "03_sdpo_vs_grpo"
PIECE = 8000  # px: one screenshot's height at most
SHOWN = 5  # raw Markdown lines named per page; the rest counted

# the page's text without verbatim code, and its size
MEASURE = """
const verbatim = 'pre > code, .jp-InputArea, .jp-RenderedText, .highlight, script, style';
const copy = document.body.cloneNode(true);
copy.querySelectorAll(verbatim).forEach(e => e.remove());
const holder = document.createElement('div');
holder.style.position = 'absolute'; holder.style.left = '-99999px';
holder.appendChild(copy); document.body.appendChild(holder);
const text = copy.innerText; holder.remove();
const root = document.documentElement;
return {text: text, width: root.scrollWidth, window: window.innerWidth,
        height: Math.max(root.scrollHeight, document.body.scrollHeight)};
"""


def default_report() -> Path:
    demo = RUNS / "demo" / "report.html"
    return demo if demo.exists() else RUNS / "full" / "report.html"


def notebook_html(ipynb: Path, out: Path) -> Path:
    """The executed notebook as nbconvert's HTMLExporter writes it (JupyterLab's look)."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(ipynb, as_version=4))
    path = out / f"{ipynb.stem}.html"
    path.write_text(body, encoding="utf-8")
    return path


def browser(width: int):
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--hide-scrollbars", f"--window-size={width},1000"):  # fmt: skip
        opts.add_argument(arg)
    if found := shutil.which("chromium") or shutil.which("chromium-browser"):
        opts.binary_location = found
    driver = shutil.which("chromedriver")
    service = webdriver.ChromeService(executable_path=driver) if driver else None
    return webdriver.Chrome(options=opts, service=service)


def markdown_left(text: str) -> list[str]:
    """What of the rendered text is raw Markdown."""
    found = [f"{marker!r} in the text" for marker in ("**", "```") if marker in text]
    lines = [x.strip() for x in text.splitlines() if x.lstrip().startswith(("- ", "# "))]
    found += [f"a line starts with Markdown: {x[:80]!r}" for x in lines[:SHOWN]]
    if len(lines) > SHOWN:
        found.append(f"... and {len(lines) - SHOWN} more lines starting with '- ' or '# '")
    return found


def screenshots(driver, name: str, width: int, height: int, out: Path) -> list[Path]:
    """Full-page screenshots of the loaded page, in pieces of at most PIECE px."""
    paths = []
    for i, top in enumerate(range(0, height, PIECE)):
        clip = {"x": 0, "y": top, "width": width, "height": min(PIECE, height - top), "scale": 1}
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"clip": clip, "captureBeyondViewport": True}
        )
        suffix = "" if height <= PIECE else f"_{i + 1}"
        path = out / f"{name}{suffix}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        paths.append(path)
    return paths


def check(driver, page: Path, out: Path) -> list[str]:
    driver.get(page.resolve().as_uri())
    seen = driver.execute_script(MEASURE)
    width, window, height = seen["width"], seen["window"], seen["height"]
    shots = screenshots(driver, page.stem, window, height, out)
    size = page.stat().st_size / 2**20
    print(
        f"{page}: {width} px wide in a {window} px window, {height} px tall, {size:.2f} MB; "
        f"screenshots: {', '.join(map(str, shots))}"
    )
    failures = [f"{page}: {problem}" for problem in markdown_left(seen["text"])]
    if width > window:
        failures.insert(0, f"{page}: {width} px wide, wider than the {window} px window")
    # the collapsed parts (full tables, more figures) must not widen the page either
    driver.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")
    opened = driver.execute_script(MEASURE)
    if opened["width"] > window:
        failures.append(f"{page}: {opened['width']} px wide with its details open")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", nargs="?", type=Path, default=None)
    parser.add_argument("--notebook", type=Path, default=None, help="an executed .ipynb")
    parser.add_argument("--out", type=Path, default=Path("/tmp/browser_check"))
    parser.add_argument("--width", type=int, default=1400)
    args = parser.parse_args(argv)
    report = args.report or default_report()
    notebook = args.notebook or report.parent / "notebooks" / f"{NOTEBOOK}.ipynb"
    args.out.mkdir(parents=True, exist_ok=True)
    pages, failures = [], []
    for path in (report, notebook):
        if path.exists():
            pages.append(path)
        else:
            failures.append(f"{path}: missing")
    driver = browser(args.width)
    try:
        for page in pages:
            if page.suffix == ".ipynb":
                page = notebook_html(page, args.out)
            failures += check(driver, page, args.out)
    finally:
        driver.quit()
    for line in failures:
        print(f"FAIL {line}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
