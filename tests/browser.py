"""Render a page in headless Chromium (Debian's ``chromium``) and return its DOM after scripts ran."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # this machine's network is closed; no calls home
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")


def render(url: str, budget_ms: int = 3000) -> str:
    """The DOM of ``url`` once ``budget_ms`` of virtual time has passed (timers and fetches done)."""
    with tempfile.TemporaryDirectory(prefix="splitasr-chromium-") as profile:
        cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", "--dump-dom"]
        done = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def cells(dom: str, cls: str) -> list[str]:
    """Texts of the ``<td>`` cells of class ``cls`` (outside scripts, whose templates match too)."""
    dom = re.sub(r"<script>.*?</script>", "", dom, flags=re.S)
    return re.findall(rf'<td class="[^"]*\b{cls}\b[^"]*">([^<]*)</td>', dom)
