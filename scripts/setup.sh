#!/usr/bin/env bash
# Installs what the tests and the demo need on a fresh Debian machine:
# Prosody (the real XMPP server the end-to-end tests start on loopback).
# Idempotent: does nothing when everything is there.
set -euo pipefail

if ! command -v prosody >/dev/null 2>&1 || ! command -v prosodyctl >/dev/null 2>&1; then
    echo "setup: installing prosody from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq prosody >/dev/null
fi
# The package may start a system Prosody on the default ports; the tests
# and the demo start their own on free loopback ports with their own
# config, so it does not matter.
# (`prosody --version` does not exit on Debian's 0.12; ask dpkg instead.)
echo "setup: prosody $(dpkg-query -W -f='${Version}' prosody 2>/dev/null || echo '(version unknown)')"
