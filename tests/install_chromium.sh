#!/usr/bin/env bash
# Debian's chromium, for the test that opens the HTML report in a headless browser. Installed when missing
# (as root, or with `sudo -n`); when it cannot be installed, that test skips and says so.
set -uo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
        echo "install_chromium.sh: not root and no sudo: the browser test will skip" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium) >/tmp/flock_llm_chromium_install.log 2>&1; then
    echo "install_chromium.sh: apt-get could not install chromium (see /tmp/flock_llm_chromium_install.log):" \
        "the browser test will skip" >&2
fi
exit 0
