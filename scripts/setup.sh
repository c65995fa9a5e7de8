#!/usr/bin/env bash
# Installs what the tests and the demo need on a fresh Debian machine:
# Prosody and ejabberd (the real XMPP servers the end-to-end tests start
# on loopback) and slixmpp (the real client and component library of the
# tests and the demo).
# Idempotent: does nothing when everything is there.
set -euo pipefail

if ! command -v prosody >/dev/null 2>&1 || ! command -v prosodyctl >/dev/null 2>&1; then
    echo "setup: installing prosody from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq prosody >/dev/null
fi
# ejabberd for tests/e2e_ejabberd.rs (several connections per component
# domain) and tests/e2e_cluster.rs (two nodes; epmd comes with it). Its package does not start a service on these machines; the
# tests run their own node with a private config.
if ! command -v ejabberdctl >/dev/null 2>&1; then
    echo "setup: installing ejabberd from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq ejabberd >/dev/null
fi
echo "setup: ejabberd $(dpkg-query -W -f='${Version}' ejabberd 2>/dev/null || echo '(version unknown)')"
# The package may start a system Prosody on the default ports; the tests
# and the demo start their own on free loopback ports with their own
# config, so it does not matter.
# (`prosody --version` does not exit on Debian's 0.12; ask dpkg instead.)
echo "setup: prosody $(dpkg-query -W -f='${Version}' prosody 2>/dev/null || echo '(version unknown)')"

# slixmpp is the real XMPP client code of the tests and the demo: c2s
# clients (tests/support/c2s_client.py, examples/implementing_client.py)
# and component instances (tests/support/echo_component.py).
if ! python3 -c 'import slixmpp' >/dev/null 2>&1; then
    echo "setup: installing slixmpp from PyPI"
    # Debian's own python3 refuses pip installs (PEP 668) without the flag.
    python3 -m pip install -q slixmpp==1.17.0 \
        || python3 -m pip install -q --break-system-packages slixmpp==1.17.0
fi
slixmpp_version=$(python3 -c 'import slixmpp; print(slixmpp.__version__)')
echo "setup: slixmpp $slixmpp_version"
