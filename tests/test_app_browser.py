"""The demo app in a real browser: Debian's Chromium, headless, driven by playwright.

The app is started with :func:`scadversarial.app.launch` on a free loopback port; Chromium only
resolves loopback hosts. When ``/usr/bin/chromium`` is missing, a session fixture installs it
with ``apt-get`` (as root); the test is skipped, with the reason, only where that is impossible.
Never ``playwright install``: it downloads a browser.

Also a script, to measure cell-change latency on any pipeline folder::

    python tests/test_app_browser.py --adata OUT/adata.h5ad [--screenshot shot.png] [--n 10]
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from scadversarial import app as sad_app
from scadversarial.app import logic

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]
EPOCHS = 15  # as in tests/test_app.py, so both modules share one pipeline folder


# ----------------------------------------------------------------------------------------------
# helpers (used by the test and by the script)
def find_chromium() -> str | None:
    """Path of Debian's Chromium, or ``None``."""
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    return shutil.which("chromium")


def install_chromium(timeout: float = 900) -> tuple[str | None, str]:
    """Install Debian's Chromium with apt-get when missing; return ``(path or None, reason)``."""
    path = find_chromium()
    if path:
        return path, "found"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return (
            None,
            "Chromium is missing and this is not root: run `apt-get install -y chromium` (Debian) to enable this test",
        )
    if shutil.which("apt-get") is None:
        return None, "Chromium is missing and there is no apt-get to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"`{' '.join(cmd)}` failed: {e}"
        if res.returncode != 0:
            return None, f"`{' '.join(cmd)}` failed (exit {res.returncode}): {res.stderr.strip()[-300:]}"
    path = find_chromium()
    return path, "installed with apt-get" if path else "apt-get ran but no chromium binary was found"


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(adata: Path, models: Path | None, log: Path, *, timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """Start the app with :func:`scadversarial.app.launch` on a free loopback port; wait until healthy."""
    port = free_port()
    # the server writes to its own copy of the log's file descriptor: this one can be closed at once
    with log.open("w") as fh:
        proc = sad_app.launch(
            adata,
            models,
            port,
            address="127.0.0.1",
            headless=True,
            wait=False,
            streamlit_args=["--server.fileWatcherType", "none", "--server.runOnSave", "false"],
            popen_kwargs={"stdout": fh, "stderr": subprocess.STDOUT},
        )
    assert isinstance(proc, subprocess.Popen), "streamlit is not installed"
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = f"the app exited with code {proc.returncode}:\n{log.read_text()[-3000:]}"
            raise RuntimeError(msg)
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().decode().strip() == "ok":
                    return proc, url
        except OSError:
            pass
        time.sleep(0.25)
    stop_app(proc)
    msg = f"the app did not answer on {url}/_stcore/health within {timeout} s:\n{log.read_text()[-3000:]}"
    raise RuntimeError(msg)


def stop_app(proc: subprocess.Popen) -> None:
    """Terminate the app's process."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def open_browser(playwright, chromium: str):
    """Headless Debian Chromium that resolves only loopback hosts."""
    return playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)


def status_line(page):
    """The line the page writes last on each run: ``Cell i (name) shown; ...; computed in N ms.``"""
    return page.locator(".st-key-status_line")


def attack_toggle(page):
    """The sidebar's "Attack this cell" toggle."""
    return page.get_by_test_id("stSidebar").get_by_text("Attack this cell", exact=True)


def select_cell(page, index: int, *, timeout: float = 30_000) -> float:
    """Type ``index`` into the cell picker; return the seconds until the page has finished showing it.

    Polls on every animation frame (``expect`` backs off to 0.5-1 s between polls, which would
    hide the real latency).
    """
    box = page.get_by_label("Cell index")
    box.fill(str(index))
    t0 = time.perf_counter()
    box.press("Enter")
    page.wait_for_function(
        "text => (document.querySelector('.st-key-status_line') || {}).innerText?.includes(text)",
        arg=f"Cell {index} (",
        polling="raf",
        timeout=timeout,
    )
    return time.perf_counter() - t0


def measure_cell_changes(page, indices) -> list[float]:
    """Browser-side latency of a series of cell changes (seconds each)."""
    return [select_cell(page, int(i)) for i in indices]


def wait_for_page(page, url: str, *, timeout: float = 180_000) -> None:
    """Open the app and wait for the first complete run (the pipeline is loaded on the first visit)."""
    from playwright.sync_api import expect

    page.goto(url)
    expect(status_line(page)).to_contain_text("computed in", timeout=timeout)


# ----------------------------------------------------------------------------------------------
# fixtures
@pytest.fixture(scope="session")
def chromium() -> str:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install 'scadversarial[test]'")
    pytest.importorskip("streamlit", reason="streamlit is not installed: pip install 'scadversarial[app]'")
    path, reason = install_chromium()
    if path is None:
        pytest.skip(f"real-browser test skipped: {reason}")
    return path


@pytest.fixture(scope="session")
def browser_pipeline_dir(tmp_path_factory) -> Path:
    # the same folder and settings as tests/test_app.py's fixture: built once per session
    return logic.build_default_pipeline(tmp_path_factory.getbasetemp() / "app_pipeline", max_epochs=EPOCHS)


@pytest.fixture(scope="session")
def app_url(chromium, browser_pipeline_dir, tmp_path_factory):
    log = tmp_path_factory.getbasetemp() / "app_server.log"
    proc, url = start_app(browser_pipeline_dir / "adata.h5ad", browser_pipeline_dir / "models", log)
    yield url
    stop_app(proc)


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory) -> Path:
    out = os.environ.get("SCADVERSARIAL_SCREENSHOT_DIR")
    path = Path(out) if out else tmp_path_factory.getbasetemp() / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ----------------------------------------------------------------------------------------------
def test_install_chromium_reasons(monkeypatch):
    """Where Chromium is missing and cannot be installed, the reason says what to do."""
    monkeypatch.setitem(globals(), "find_chromium", lambda: None)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    path, reason = install_chromium()
    assert path is None
    assert "apt-get install -y chromium" in reason


@pytest.mark.browser
def test_app_in_browser(chromium, app_url, browser_pipeline_dir, screenshot_dir):
    from playwright.sync_api import expect, sync_playwright

    pipe = logic.load_pipeline(browser_pipeline_dir / "adata.h5ad")
    eps = pipe.attack_defaults.eps
    method = pipe.attack_defaults.method
    # a held-out cell whose attack succeeds makes the most telling screenshot (any cell works for the test)
    held_out = np.flatnonzero(pipe.split == "test")[:30] if pipe.split is not None else np.arange(30)
    held_out = held_out[held_out > 0]  # not the default cell 0: the test must change the cell
    cell = next((int(i) for i in held_out if logic.attack_cell(pipe, int(i), method=method, eps=eps).success), 5)
    c, a = logic.clean_cell(pipe, cell), logic.attack_cell(pipe, cell, method=method, eps=eps)
    with sync_playwright() as p:
        browser = open_browser(p, chromium)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 2600})
            wait_for_page(page, app_url)
            expect(page.get_by_text("Clean cell", exact=True)).to_be_visible()
            select_cell(page, cell)
            attack_toggle(page).click()
            expect(status_line(page)).to_contain_text("succeeded" if a.success else "failed", timeout=30_000)

            clean_panel, attack_panel = page.locator(".st-key-clean_panel"), page.locator(".st-key-attack_panel")
            expect(clean_panel).to_contain_text(f"True label: {c.true_label}")
            expect(clean_panel).to_contain_text(f"Predicted label: {c.predicted} (probability {c.confidence:.2f})")
            expect(attack_panel).to_contain_text(f"Predicted label: {a.predicted} (probability {a.confidence:.2f})")
            expect(attack_panel).to_contain_text("Attack succeeded" if a.success else "Attack failed")
            expect(clean_panel).to_contain_text(f"Detector verdict: {c.verdict(pipe.threshold)}")
            expect(attack_panel).to_contain_text(f"Detector verdict: {a.verdict(pipe.threshold)}")
            expect(page.locator("[data-testid='stException']")).to_have_count(0)
            page.screenshot(path=str(screenshot_dir / "app_attack.png"), full_page=True)

            # cell changes with the attack on: each new cell is shown, attacked, with logic's numbers
            # (their latency is measured by `python tests/test_app_browser.py --adata ...`, not asserted here)
            for nxt in (cell + 1, cell + 2, cell + 3):
                select_cell(page, nxt)
                c, a = logic.clean_cell(pipe, nxt), logic.attack_cell(pipe, nxt, method=method, eps=eps)
                expect(clean_panel).to_contain_text(f"Cell {nxt} ({c.name})")
                expect(attack_panel).to_contain_text(f"Predicted label: {a.predicted} (probability {a.confidence:.2f})")
                expect(attack_panel).to_contain_text(f"Detector verdict: {a.verdict(pipe.threshold)}")
            expect(status_line(page)).to_contain_text(f"Cell {cell + 3} (")
        finally:
            browser.close()


# ----------------------------------------------------------------------------------------------
def _main(argv=None) -> int:
    import argparse

    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description="Measure the app's cell-change latency in headless Chromium.")
    parser.add_argument("--adata", required=True)
    parser.add_argument("--models", default=None)
    parser.add_argument("--n", type=int, default=10, help="number of cell changes")
    parser.add_argument("--screenshot", default=None)
    parser.add_argument("--log", default="app_server.log")
    args = parser.parse_args(argv)
    path, reason = install_chromium()
    if path is None:
        print(reason, file=sys.stderr)
        return 1
    proc, url = start_app(Path(args.adata), Path(args.models) if args.models else None, Path(args.log))
    try:
        with sync_playwright() as p:
            browser = open_browser(p, path)
            page = browser.new_page(viewport={"width": 1500, "height": 2600})
            t0 = time.perf_counter()
            wait_for_page(page, url)
            print(f"first page (loads the pipeline): {time.perf_counter() - t0:.2f} s")
            off = measure_cell_changes(page, range(1, args.n + 1))
            attack_toggle(page).click()
            page.wait_for_timeout(500)
            on = measure_cell_changes(page, range(args.n + 1, 2 * args.n + 1))
            for name, t in (("attack off", off), ("attack on", on)):
                ms = [round(1000 * x) for x in t]
                print(f"cell change, {name}: median {np.median(ms):.0f} ms, max {max(ms)} ms ({ms})")
            print(status_line(page).inner_text())
            if args.screenshot:
                page.screenshot(path=args.screenshot, full_page=True)
            browser.close()
    finally:
        stop_app(proc)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
