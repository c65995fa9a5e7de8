#!/usr/bin/env python3
"""A minimal "implementing client" for jatproxy's client mode: an ordinary
XMPP account (the target) whose resources answer the requests that
jatproxy forwards from its component domain.

    python3 examples/implementing_client.py \\
        --jid impl@example.test/a --password implpw --server 127.0.0.1:5222

(or set IMPL_JID, IMPL_PASSWORD, IMPL_SERVER). It

* logs in (plaintext TCP for a test server on loopback; pass --tls to use
  STARTTLS against a real server),
* sends initial presence, again after every reconnect,
* answers <presence type='subscribe'> from anyone with `subscribed` (the
  proxy subscribes to the target to learn which resources are online),
* answers iq get/set carrying <echo xmlns='urn:example:echo'>TEXT</echo>
  with <echo xmlns='urn:example:echo' from-resource='RES'>TEXT</echo>,
  and every other iq get/set with service-unavailable,
* prints each iq it receives: the `from` shows the translated requester
  address, e.g. proxy.example.test/alice@example.test/phone. Answer to
  exactly that address: jatproxy translates it back.

Written with slixmpp (pip install slixmpp); a service inside an XMPP
client in any language does the same four things.
"""

import argparse
import os
import sys

from slixmpp import ClientXMPP
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

NS_ECHO = "urn:example:echo"


def say(line):
    print(line, flush=True)


class ImplementingClient(ClientXMPP):
    def __init__(self, jid, password, tls):
        plugin_config = {}
        if not tls:
            # Loopback test server without TLS: SCRAM over plain TCP.
            plugin_config = {"feature_mechanisms": {"unencrypted_scram": True}}
        super().__init__(jid, password, plugin_config=plugin_config)
        self.use_ipv6 = False
        self.enable_direct_tls = False
        self.enable_starttls = tls
        self.enable_plaintext = not tls
        # Accept the proxy's subscription (and anyone else's) ourselves, so
        # the decision is visible here; never subscribe back.
        self.auto_authorize = None
        self.auto_subscribe = False
        self.register_handler(
            Callback(
                "echo",
                MatchXPath("{%s}iq/{%s}echo" % (self.default_ns, NS_ECHO)),
                self.on_echo,
            )
        )
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("presence_subscribe", self.on_subscribe)
        self.add_event_handler("disconnected", self.on_disconnected)
        self.add_event_handler("connection_failed", self.on_connection_failed)
        self.add_event_handler("message", self.on_message)

    def on_start(self, _event):
        say("online as %s" % self.boundjid)
        self.send_presence()

    def on_disconnected(self, reason):
        say("disconnected: %s; reconnecting" % (reason,))
        self.loop.call_later(1, lambda: self.connect(*self.target_addr))

    def on_connection_failed(self, error):
        say("connection failed: %s" % (error,))

    def on_subscribe(self, presence):
        say("subscribe from %s: accepting" % presence["from"])
        self.send_presence(pto=presence["from"].bare, ptype="subscribed")

    def on_message(self, msg):
        say("message from %s : %r" % (msg["from"], msg["body"]))

    def on_echo(self, iq):
        if iq["type"] not in ("get", "set"):
            return
        echo = iq.xml.find("{%s}echo" % NS_ECHO)
        say(
            "iq %s id=%s from=%s to=%s echo=%r"
            % (iq["type"], iq["id"], iq["from"], iq["to"], echo.text or "")
        )
        reply = iq.reply(clear=True)
        out = ET.Element("{%s}echo" % NS_ECHO, {"from-resource": self.boundjid.resource})
        out.text = echo.text or ""
        reply.append(out)
        reply.send()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jid", default=os.environ.get("IMPL_JID"))
    ap.add_argument("--password", default=os.environ.get("IMPL_PASSWORD"))
    ap.add_argument("--server", default=os.environ.get("IMPL_SERVER", "127.0.0.1:5222"))
    ap.add_argument("--tls", action="store_true", help="require STARTTLS")
    args = ap.parse_args()
    if not args.jid or not args.password:
        ap.error("--jid and --password (or IMPL_JID, IMPL_PASSWORD) are required")
    host, _, port = args.server.rpartition(":")
    if not host or not port.isdigit():
        ap.error("--server must be HOST:PORT, got %r" % args.server)

    xmpp = ImplementingClient(args.jid, args.password, args.tls)
    xmpp.target_addr = (host.strip("[]"), int(port))
    # Any other request gets service-unavailable: slixmpp answers unhandled
    # iq get/set with feature-not-implemented, the module's README asks
    # for service-unavailable, so say it explicitly.
    xmpp.register_handler(
        Callback(
            "other-requests",
            MatchXPath("{%s}iq" % xmpp.default_ns),
            lambda iq: refuse(xmpp, iq),
        )
    )
    xmpp.connect(*xmpp.target_addr)
    try:
        xmpp.loop.run_forever()
    except KeyboardInterrupt:
        sys.exit(0)


def refuse(xmpp, iq):
    if iq["type"] not in ("get", "set"):
        return
    if iq.xml.find("{%s}echo" % NS_ECHO) is not None:
        return  # on_echo answers it
    sender = iq["from"]
    if not sender or sender.bare == xmpp.boundjid.bare or sender.full == xmpp.boundjid.domain:
        return  # our own server or account (e.g. a roster push): the library's
    say("iq %s id=%s from=%s: not an echo, service-unavailable" % (iq["type"], iq["id"], iq["from"]))
    reply = iq.reply(clear=True)
    reply["error"]["type"] = "cancel"
    reply["error"]["condition"] = "service-unavailable"
    reply.send()


if __name__ == "__main__":
    main()
