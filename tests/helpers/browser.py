"""Headless Chromium for tests of HTML pages: Debian's `chromium`, found on PATH (or NM_CHROMIUM)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

# What a root, offline, headless Chromium needs to start quickly and reach nothing.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def require_chromium() -> str:
    """Chromium's path. Without one, skip; but fail in CI (CI=true, or NM_REQUIRE_CHROMIUM=1), where
    .ci/run installs it: a browser test that silently skips there tests nothing."""
    path = os.environ.get("NM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        hint = "chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("CI") == "true" or os.environ.get("NM_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"CI: {hint}")
        pytest.skip(hint)
    return path


def run_chromium(chromium: str, url: str, tmp_path: Path, *args: str) -> str:
    """Load ``url`` (its scripts run) in a fresh profile under ``tmp_path``; returns stdout."""
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    profile.mkdir()
    out = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args, url], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout
