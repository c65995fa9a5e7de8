#!/usr/bin/env python3
"""A real XMPP c2s client for the Rust tests: slixmpp's ClientXMPP, logged
in to a test server over plaintext loopback TCP, driven line by line.

Why a separate program: tokio-xmpp 6's client intermittently stopped
surfacing incoming stanzas under load in our Prosody suites (the server had
delivered them), which made those suites flaky. slixmpp's event loop reads
the socket on its own and has been solid in tests/e2e_instances.rs.

Protocol (one JSON object per line, UTF-8):

stdout, from this program:
  {"ev": "online", "jid": FULLJID}   session started (again after a reconnect)
  {"ev": "stanza", "xml": XML}       every iq/message/presence received, as is
  {"ev": "sent", "n": N}             command N was written to the socket
  {"ev": "disconnected"}             the stream or TCP connection ended
  {"ev": "closed"}                   after "close": stream closed, exiting

stdin, to this program:
  {"cmd": "send", "n": N, "xml": XML}   write XML to the stream
  {"cmd": "auto_accept", "on": BOOL}    answer presence subscribe with subscribed
                                        (--auto-accept: from the first stanza on)
  {"cmd": "close"}                      send </stream:stream>, wait, exit 0
  end of input                          exit at once (the socket is cut)

The client does nothing on its own: no roster fetch, no presence, no
automatic subscription handling (auto_authorize None), no answers to
requests (a catch-all handler takes every stanza, so slixmpp never replies
feature-not-implemented). One exception, asked for with
--disco-feature VAR (repeatable): slixmpp's disco plugin answers
disco#info gets itself, listing each VAR, and those gets are not passed
on (so a member can qualify by feature, as jicofo does). After a disconnect it reconnects, as a real
client would, and says "online" again. Logging goes to stderr.

Needs slixmpp (scripts/setup.sh installs slixmpp==1.17.0).
"""

import argparse
import asyncio
import json
import logging
import os
import sys

from slixmpp import ClientXMPP
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath


NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class TestClient(ClientXMPP):
    def __init__(self, jid, password, host, port, disco_features=()):
        # Loopback without TLS: SCRAM is fine, and the only option here.
        super().__init__(
            jid,
            password,
            plugin_config={"feature_mechanisms": {"unencrypted_scram": True}},
        )
        self.host = host
        self.port = port
        self.closing = False
        self.auto_accept = False
        # Stanzas before session_start (bind, session) are the library's.
        self.in_session = False
        # Only the address given: no DNS, no IPv6, no TLS attempts.
        self.use_ipv6 = False
        self.enable_direct_tls = False
        self.enable_starttls = False
        self.enable_plaintext = True
        # The test decides about subscriptions, not the library.
        self.auto_authorize = None
        self.auto_subscribe = False
        # Plain TCP on loopback: never give up on the first refused
        # connect, and do not back off for long.
        self.add_event_handler("connection_failed", self.on_connection_failed)
        for name in ("iq", "message", "presence"):
            self.register_handler(
                Callback(
                    "forward-" + name,
                    MatchXPath("{%s}%s" % (self.default_ns, name)),
                    self.forward,
                )
            )
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("disconnected", self.on_disconnected)
        self.answers_disco = bool(disco_features)
        if self.answers_disco:
            self.register_plugin("xep_0030")
            for var in disco_features:
                self["xep_0030"].add_feature(var)

    def on_connection_failed(self, _error):
        # slixmpp doubles its retry delay after every refused connect
        # (up to 300 s); a test server restart must not wait that long.
        self._connect_loop_wait = 0

    def on_start(self, _event):
        self.in_session = True
        emit({"ev": "online", "jid": str(self.boundjid)})

    def on_disconnected(self, _reason):
        self.in_session = False
        emit({"ev": "disconnected"})
        if not self.closing:
            self.loop.call_later(0.1, lambda: self.connect(self.host, self.port))

    def forward(self, stanza):
        if not self.in_session:
            return
        if (
            self.answers_disco
            and stanza.name == "iq"
            and stanza["type"] == "get"
            and stanza.xml.find("{%s}query" % NS_DISCO_INFO) is not None
        ):
            return  # the disco plugin answers it
        emit({"ev": "stanza", "xml": str(stanza)})
        if (
            self.auto_accept
            and stanza.name == "presence"
            and stanza["type"] == "subscribe"
        ):
            self.send_presence(pto=stanza["from"].bare, ptype="subscribed")

    def command(self, line):
        try:
            cmd = json.loads(line)
        except ValueError:
            logging.error("bad command line: %r", line)
            return
        kind = cmd.get("cmd")
        if kind == "send":
            try:
                self.send_raw(cmd["xml"])
                emit({"ev": "sent", "n": cmd["n"]})
            except Exception as e:  # not connected, mostly
                emit({"ev": "send_failed", "n": cmd["n"], "error": str(e)})
        elif kind == "auto_accept":
            self.auto_accept = bool(cmd.get("on"))
        elif kind == "close":
            self.closing = True
            fut = self.disconnect(wait=5)

            def done(_f):
                emit({"ev": "closed"})
                self.loop.stop()

            fut.add_done_callback(done)
        else:
            logging.error("unknown command: %r", cmd)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--jid", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--auto-accept", action="store_true")
    ap.add_argument("--disco-feature", action="append", default=[])
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    xmpp = TestClient(
        args.jid, args.password, args.host, args.port, args.disco_feature
    )
    xmpp.auto_accept = args.auto_accept

    fd = sys.stdin.fileno()
    os.set_blocking(fd, False)
    pending = bytearray()

    def on_stdin():
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            return
        if not chunk:
            # The test dropped us: cut the connection without a goodbye.
            xmpp.closing = True
            loop.remove_reader(fd)
            loop.stop()
            return
        pending.extend(chunk)
        while True:
            end = pending.find(b"\n")
            if end < 0:
                break
            line = bytes(pending[:end]).decode("utf-8")
            del pending[: end + 1]
            if line.strip():
                xmpp.command(line)

    loop.add_reader(fd, on_stdin)
    xmpp.connect(args.host, args.port)
    loop.run_forever()


if __name__ == "__main__":
    main()
