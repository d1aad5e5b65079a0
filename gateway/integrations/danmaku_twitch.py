"""Twitch chat as danmaku: the IRC interface (plain text over TCP), read anonymously.

Twitch chat is IRC with IRCv3 message tags (https://dev.twitch.tv/docs/chat/irc/). Reading a
channel needs no account: ``NICK justinfan<digits>`` logs in read-only. ``TwitchChat`` connects,
asks for the tags and commands capabilities, joins ``#channel``, answers ``PING`` with ``PONG``,
reconnects (with a growing pause) when the server closes or sends ``RECONNECT``, and turns

- ``PRIVMSG`` into a ``chat`` comment; with a ``bits`` tag (a cheer) into a ``superchat`` whose
  ``amount`` is the bits in dollars (100 bits = 1); a reply to the broadcaster into a ``mention``;
- ``USERNOTICE`` for subscriptions, gifted subscriptions and raids into a ``gift`` (its text is the
  viewer's message, or what was given: "subscription", "gift subscription", "raid").

``parse_line`` is pure (tested line by line); the connection is plain TCP (port 6667) or TLS (6697).
Tested against a local fake IRC server (``tests/test_danmaku_live.py``), never against Twitch.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.integrations.danmaku_policy import Comment

__all__ = ["IrcMessage", "TwitchChat", "parse_line", "to_comment"]

logger = logging.getLogger("voxgate.integrations.danmaku.twitch")

_TAG_ESCAPES = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}
# "Cheer100", "BibleThump50": cheermotes at word starts, removed from the spoken text.
_CHEER_RE = re.compile(r"(?<!\S)[A-Za-z]+\d+(?!\S)")
_GIFT_TEXT = {"sub": "subscription", "resub": "subscription", "subgift": "gift subscription",
              "submysterygift": "gift subscriptions", "raid": "raid"}


@dataclass(frozen=True, slots=True)
class IrcMessage:
    """One IRC line: ``@tags :prefix COMMAND params :trailing``."""

    command: str
    params: tuple[str, ...] = ()
    prefix: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def nick(self) -> str:
        return self.prefix.partition("!")[0]


def _unescape(value: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            out.append(_TAG_ESCAPES.get(value[i + 1], value[i + 1]))
            i += 2
            continue
        if ch != "\\":
            out.append(ch)
        i += 1
    return "".join(out)


def parse_line(line: str) -> IrcMessage | None:
    """Parse one IRC line (without CRLF); None for an empty or malformed one."""
    line = line.rstrip("\r\n")
    tags: dict[str, str] = {}
    if line.startswith("@"):
        raw, _, line = line.partition(" ")
        for item in raw[1:].split(";"):
            key, _, value = item.partition("=")
            tags[key] = _unescape(value)
    prefix = ""
    if line.startswith(":"):
        prefix, _, line = line[1:].partition(" ")
    line, separator, trailing = line.partition(" :")
    words = line.split()
    if not words:
        return None
    params = tuple(words[1:]) + ((trailing,) if separator else ())
    return IrcMessage(command=words[0].upper(), params=params, prefix=prefix, tags=tags)


def to_comment(message: IrcMessage, *, broadcaster: str = "") -> Comment | None:
    """The comment a ``PRIVMSG`` or ``USERNOTICE`` stands for, or None for anything else."""
    tags = message.tags
    login = tags.get("login") or message.nick
    user = tags.get("user-id") or login
    if not user:
        return None
    name = tags.get("display-name") or login
    at = int(tags.get("tmi-sent-ts", "0") or 0) / 1000.0
    text = message.params[-1] if len(message.params) >= 2 else ""
    if message.command == "PRIVMSG":
        bits = int(tags.get("bits", "0") or 0)
        if bits > 0:
            return Comment(user, _CHEER_RE.sub("", text).strip(), kind="superchat", amount=bits / 100.0,
                           name=name, id=tags.get("id", ""), at=at)
        replying_to = tags.get("reply-parent-user-login", "")
        kind = "mention" if broadcaster and replying_to.lower() == broadcaster.lower() else "chat"
        return Comment(user, text, kind=kind, name=name, id=tags.get("id", ""), at=at)
    if message.command == "USERNOTICE":
        what = _GIFT_TEXT.get(tags.get("msg-id", ""))
        if what is None:
            return None
        return Comment(user, text or what, kind="gift", amount=float(tags.get("msg-param-viewerCount", "0") or 0),
                       name=name, id=tags.get("id", ""), at=at)
    return None


class TwitchChat:
    """Reads one channel's chat and hands each comment to a callback, until cancelled.

    Use: ``task = asyncio.create_task(TwitchChat("mika").feed(live.submit))``. ``token`` (an OAuth
    token, "oauth:...") logs in as ``nick`` instead of anonymously; it is never logged.
    """

    def __init__(
        self,
        channel: str,
        *,
        host: str = "irc.chat.twitch.tv",
        port: int = 6667,
        tls: bool = False,
        nick: str = "",
        token: str = "",
        max_backoff_s: float = 30.0,
    ) -> None:
        self.channel = channel.lstrip("#").lower()
        self.host, self.port, self.tls = host, port, tls
        self.nick = nick or f"justinfan{secrets.randbelow(90_000) + 10_000}"
        self._token = token
        self.max_backoff_s = max_backoff_s
        #: Connections made so far (reconnects included).
        self.num_connections = 0

    async def feed(self, submit: Callable[[Comment], object]) -> None:
        backoff = 1.0
        while True:
            try:
                await self._session(submit)
                backoff = 1.0
            except (OSError, asyncio.IncompleteReadError, ConnectionError) as exc:
                logger.warning("twitch: connection to %s:%d lost (%s); retrying in %.0f s", self.host, self.port, type(exc).__name__, backoff)
            await asyncio.sleep(backoff)
            backoff = min(self.max_backoff_s, backoff * 2)

    async def _session(self, submit: Callable[[Comment], object]) -> None:
        context = ssl.create_default_context() if self.tls else None
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=context, limit=1 << 16)
        self.num_connections += 1
        try:
            login = [f"PASS {self._token}"] if self._token else []
            for line in [*login, "CAP REQ :twitch.tv/tags twitch.tv/commands", f"NICK {self.nick}", f"JOIN #{self.channel}"]:
                writer.write(line.encode() + b"\r\n")
            await writer.drain()
            logger.info("twitch: joined #%s on %s:%d", self.channel, self.host, self.port)
            while True:
                raw = await reader.readline()
                if not raw:
                    return
                message = parse_line(raw.decode("utf-8", "replace"))
                if message is None:
                    continue
                if message.command == "PING":
                    writer.write(b"PONG :" + (message.params[-1] if message.params else "tmi.twitch.tv").encode() + b"\r\n")
                    await writer.drain()
                elif message.command == "RECONNECT":
                    return
                elif message.command == "NOTICE" and "authentication failed" in (message.params[-1:] or ("",))[0].lower():
                    raise ConnectionError("twitch refused the login")
                else:
                    comment = to_comment(message, broadcaster=self.channel)
                    if comment is not None:
                        submit(comment)
        finally:
            writer.close()
