"""Screenshots of explorer pages in headless Chromium (Debian's `chromium`): static exports of
views, and the check that a page draws.

Chromium starts with a fresh profile and no network but this machine (every other host resolves
to nothing), so a page that referred to anything outside the server would show it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from dtlens.errors import DtlensError

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


def screenshot(
    url: str, out: str | Path, size: tuple[int, int] = (1280, 900), wait_ms: int = 20000
) -> Path:
    """Load `url` and save a PNG of its first `size` pixels to `out`; `wait_ms` of the page's
    virtual time lets its scripts fetch and draw (Chromium stops earlier once idle)."""
    chromium = find_chromium()
    if chromium is None:
        raise DtlensError("no chromium found: apt-get install chromium (make venv does)")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dtlens-chromium-") as profile:
        command = [
            chromium,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
            f"--virtual-time-budget={wait_ms}",
            f"--screenshot={out}",
            url,
        ]
        done = subprocess.run(
            command, capture_output=True, timeout=120, env=os.environ | {"HOME": profile}
        )
    if done.returncode != 0 or not out.is_file():
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise DtlensError(f"chromium could not screenshot {url}: {' / '.join(tail)}")
    return out
