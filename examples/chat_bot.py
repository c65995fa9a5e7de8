#!/usr/bin/env python3
"""A minimal chat bot behind jatproxy: an ordinary XMPP account whose
resources hold the conversations users have with the proxy domain
(jatproxy with `client_proxy.messages = true` and `presence = true`).

    python3 examples/chat_bot.py --jid bot@example.test/a --password botpw \\
        --server 127.0.0.1:5222 --proxy proxy.example.test

(or set BOT_JID, BOT_PASSWORD, BOT_SERVER, BOT_PROXY). Start it twice with
two resources (…/a, …/b) and users' conversations are spread over both. It

* logs in (plaintext TCP for a test server on loopback; pass --tls to use
  STARTTLS against a real server),
* sends initial presence and available presence to the proxy domain, again
  after every reconnect: that presence is what puts this resource in the
  pool,
* accepts <presence type='subscribe'> from anyone (jatproxy subscribes to
  the bot account to learn which resources are online),
* answers each chat or normal message with a body with "RES: BODY" (RES is
  this resource, so you can see which one holds the conversation). A
  message arrives from `node@proxy/ENC` (ENC is the user, translated by
  jatproxy; node is the address the user wrote to, if any); the reply goes
  to exactly that address, and the user sees it from `node@proxy`, never
  from this account.

Written with slixmpp (pip install slixmpp); a bot in any language does the
same three things.
"""

import argparse
import os
import sys

from slixmpp import ClientXMPP


def say(line):
    print(line, flush=True)


class ChatBot(ClientXMPP):
    def __init__(self, jid, password, proxy, tls):
        plugin_config = {}
        if not tls:
            # Loopback test server without TLS: SCRAM over plain TCP.
            plugin_config = {"feature_mechanisms": {"unencrypted_scram": True}}
        super().__init__(jid, password, plugin_config=plugin_config)
        self.proxy = proxy
        self.use_ipv6 = False
        self.enable_direct_tls = False
        self.enable_starttls = tls
        self.enable_plaintext = not tls
        # Accept subscriptions ourselves, so it is visible here; never
        # subscribe back.
        self.auto_authorize = None
        self.auto_subscribe = False
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("presence_subscribe", self.on_subscribe)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("disconnected", self.on_disconnected)

    def on_start(self, _event):
        self.send_presence()
        # Directed presence to the bare proxy domain: this resource joins
        # the pool even if the roster subscription is not there yet.
        self.send_presence(pto=self.proxy)
        say("online as %s" % self.boundjid)

    def on_disconnected(self, reason):
        say("disconnected: %s; reconnecting" % (reason,))
        self.loop.call_later(1, lambda: self.connect(*self.target_addr))

    def on_subscribe(self, presence):
        self.send_presence(pto=presence["from"].bare, ptype="subscribed")

    def on_message(self, msg):
        # Never answer errors, headlines or group chat: only conversations.
        if msg["type"] not in ("chat", "normal") or not msg["body"]:
            return
        say("message from %s to %s: %s" % (msg["from"], msg["to"], msg["body"]))
        # reply() swaps the addresses: to = node@proxy/ENC, which jatproxy
        # translates back to the user. Thread and type are kept.
        msg.reply("%s: %s" % (self.boundjid.resource, msg["body"])).send()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jid", default=os.environ.get("BOT_JID"))
    ap.add_argument("--password", default=os.environ.get("BOT_PASSWORD"))
    ap.add_argument("--server", default=os.environ.get("BOT_SERVER", "127.0.0.1:5222"))
    ap.add_argument("--proxy", default=os.environ.get("BOT_PROXY"), help="jatproxy's domain")
    ap.add_argument("--tls", action="store_true", help="require STARTTLS")
    args = ap.parse_args()
    if not args.jid or not args.password or not args.proxy:
        ap.error("--jid, --password and --proxy (or BOT_JID, BOT_PASSWORD, BOT_PROXY) are required")
    host, _, port = args.server.rpartition(":")
    if not host or not port.isdigit():
        ap.error("--server must be HOST:PORT, got %r" % args.server)

    bot = ChatBot(args.jid, args.password, args.proxy, args.tls)
    bot.target_addr = (host.strip("[]"), int(port))
    bot.connect(*bot.target_addr)
    try:
        bot.loop.run_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
