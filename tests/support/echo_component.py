#!/usr/bin/env python3
"""A real XEP-0114 component for tests/e2e_instances.rs: slixmpp's
ComponentXMPP, connecting to jatproxy's instance listener exactly as it
would connect to a server's component port.

It does two things:

* answers every iq get/set carrying <echo xmlns='urn:example:echo'>TEXT</echo>
  with a result whose <echo from-instance='NAME'>TEXT</echo> names this
  instance; an optional delay-ms='N' attribute on the request delays the
  answer by N milliseconds (so a test can have requests in flight on an
  instance when it kills it);
* with --refuse CONDITION it answers every such request with that stanza
  error (type cancel) instead, printing "REF ID"; with --silent it never
  answers (requests stay in flight on it until it is killed);
* with --tls-ca PEM it connects with direct TLS, trusting that CA;
* on a message whose body is "ping JID", sends a XEP-0199 ping to JID from
  the component's domain and reports the outcome to the message's sender
  as a chat message: "pong NAME from=JID to=ADDRESS" (the reply came back to
  this instance, with the address it was sent to) or "ping-error NAME
  CONDITION" / "ping-timeout NAME".

Everything it does is also printed on stdout, one line per event, flushed:
"READY NAME" once the handshake is accepted, "REQ ID" when a request
arrives, "ANS ID" when it is answered, the pong lines, and "DISCONNECTED"
(then it exits 0). Logging goes to stderr. The test harness captures both
for its failure messages.

Needs slixmpp (scripts/setup.sh installs slixmpp==1.17.0).
"""

import argparse
import asyncio
import logging
import ssl
import sys

from slixmpp import ComponentXMPP
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

NS_ECHO = "urn:example:echo"


def say(line):
    print(line, flush=True)


class EchoComponent(ComponentXMPP):
    def __init__(self, domain, secret, host, port, name, refuse=None, silent=False, tls_ca=None):
        super().__init__(domain, secret, host, port)
        self.name = name
        self.refuse = refuse
        self.silent = silent
        # Only the addresses given: no DNS, no IPv6, no TLS attempts.
        self.use_ipv6 = False
        self.enable_direct_tls = False
        self.enable_starttls = False
        if tls_ca:
            # Direct TLS only (slixmpp 1.17: use_ssl= is gone). The
            # certificate is checked against HOST, hence the test
            # certificate's IP SAN for 127.0.0.1.
            self.enable_direct_tls = True
            self.enable_plaintext = False
            self.tls_services = {"xmpps-component"}
            self.ssl_context = ssl.create_default_context(cafile=tls_ca)
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0199")
        self.register_handler(
            Callback(
                "echo",
                MatchXPath("{%s}iq/{%s}echo" % (self.default_ns, NS_ECHO)),
                self.on_echo,
            )
        )
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("disconnected", self.on_disconnected)

    def on_start(self, _event):
        say("READY %s" % self.name)

    def on_disconnected(self, reason):
        say("DISCONNECTED %s" % (reason,))
        self.loop.stop()

    def on_echo(self, iq):
        if iq["type"] not in ("get", "set"):
            return
        say("REQ %s" % iq["id"])
        if self.silent:
            return
        if self.refuse:
            err = iq.reply(clear=True)
            err["type"] = "error"
            err["error"]["type"] = "cancel"
            err["error"]["condition"] = self.refuse
            err.send()
            say("REF %s" % iq["id"])
            return
        echo = iq.xml.find("{%s}echo" % NS_ECHO)
        text = echo.text or ""
        try:
            delay = int(echo.get("delay-ms", "0")) / 1000.0
        except ValueError:
            delay = 0.0
        reply = iq.reply(clear=True)
        out = ET.Element("{%s}echo" % NS_ECHO, {"from-instance": self.name})
        out.text = text

        def answer():
            reply.append(out)
            reply.send()
            say("ANS %s" % iq["id"])

        if delay > 0:
            self.loop.call_later(delay, answer)
        else:
            answer()

    def on_message(self, msg):
        body = (msg["body"] or "").strip()
        if not body.startswith("ping "):
            return
        target = body[len("ping "):].strip()
        asyncio.ensure_future(self.ping(target, msg["from"]))

    async def ping(self, target, requester):
        say("PING %s" % target)
        try:
            res = await self["xep_0199"].send_ping(target, ifrom=self.boundjid, timeout=10)
            line = "pong %s from=%s to=%s" % (self.name, res["from"], res["to"])
        except IqError as e:
            line = "ping-error %s %s" % (self.name, e.iq["error"]["condition"])
        except IqTimeout:
            line = "ping-timeout %s" % self.name
        say(line)
        self.send_message(mto=requester, mbody=line, mtype="chat", mfrom=self.boundjid)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--domain", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--refuse", metavar="CONDITION")
    ap.add_argument("--silent", action="store_true")
    ap.add_argument("--tls-ca", metavar="PEM", help="direct TLS, trusting this CA")
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    xmpp = EchoComponent(
        args.domain,
        args.secret,
        args.host,
        args.port,
        args.name,
        refuse=args.refuse,
        silent=args.silent,
        tls_ca=args.tls_ca,
    )
    xmpp.connect(args.host, args.port)
    xmpp.loop.run_forever()


if __name__ == "__main__":
    main()
