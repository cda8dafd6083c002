#!/usr/bin/env bash
# Headless Chromium + ChromeDriver for the browser tests (tests/test_web_timeline.py, marker `browser`).
# Idempotent: returns at once when both are installed. Debian/Ubuntu, as root (or with sudo).
# A fresh install (apt-get update included) took about 40 s on the 2-core dev machine.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install_browser: run as root or install sudo" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# chromium-driver is Debian's ChromeDriver, built from the same source as chromium, so versions match.
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
/usr/bin/chromium --version
/usr/bin/chromedriver --version
