"""The WebSocket endpoint /ws/v1/stream (protocol in README "Live feeds").

One connection subscribes to any number of channels. Per channel the consumer remembers the
last sequence number it sent: a message at or below it is dropped (already in the snapshot),
one beyond the next is preceded by the missing ones read from the StreamEvent table, and if
those are gone the client gets a fresh snapshot. Channels handles one message of a consumer
at a time, so a subscription and the messages of its channel never interleave.
"""

from __future__ import annotations

import logging
from urllib.parse import urlparse

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from . import selectors
from .publish import account_channel, group_name, market_channel

log = logging.getLogger(__name__)

MAX_SUBSCRIPTIONS = 50


class StreamConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        self.account = None
        self.subs: dict[str, dict] = {}  # stream channel -> {"public": name, "seq": last sent}
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.scope.get("headers", [])}
        await self.accept()
        auth = headers.get("authorization", "")
        if auth:
            parts = auth.split()
            if len(parts) != 2 or parts[0].lower() != "bearer":
                await self._fail("invalid_authorization", "Use 'Authorization: Bearer <api key>'.", close=True)
                return
            self.account = await database_sync_to_async(selectors.stream_key_account)(raw=parts[1])
            if self.account is None:
                await self._fail("invalid_api_key", "This API key is unknown, revoked or lacks the read scope.",
                                 close=True)  # fmt: skip
                return
        elif self._same_origin(headers):
            # A browser's session cookie counts only from a page of this site (a cross-site
            # page could otherwise open the socket with the visitor's cookie).
            self.account = await database_sync_to_async(selectors.stream_user_account)(
                user=self.scope.get("user"), session=self.scope.get("session")
            )
        if settings.STREAMS_DELIVERY == "relay":
            from .relay import relay_ensure

            relay_ensure()

    @staticmethod
    def _same_origin(headers: dict[str, str]) -> bool:
        origin = headers.get("origin")
        return bool(origin) and urlparse(origin).netloc == headers.get("host")

    async def disconnect(self, code: int) -> None:
        for channel in list(getattr(self, "subs", {})):
            await self.channel_layer.group_discard(group_name(channel), self.channel_name)

    async def _fail(self, code: str, message: str, *, close: bool = False, **extra) -> None:
        await self.send_json({"type": "error", "code": code, "message": message, **extra})
        if close:
            await self.close(code=4401)

    async def receive_json(self, content, **kwargs) -> None:
        op = content.get("op") if isinstance(content, dict) else None
        if op == "ping":
            await self.send_json({"type": "pong"})
        elif op == "auth":
            account = await database_sync_to_async(selectors.stream_key_account)(raw=str(content.get("key", "")))
            if account is None:
                await self._fail("invalid_api_key", "This API key is unknown, revoked or lacks the read scope.",
                                 close=True)  # fmt: skip
                return
            if self.account is not None and self.account.pk != account.pk:
                await self._fail("already_authenticated", "This connection belongs to another account.")
                return
            self.account = account
            await self.send_json({"type": "authenticated", "account": account.slug})
        elif op == "subscribe":
            await self._subscribe(str(content.get("channel", "")))
        elif op == "unsubscribe":
            public = str(content.get("channel", ""))
            for channel, sub in list(self.subs.items()):
                if sub["public"] == public:
                    del self.subs[channel]
                    await self.channel_layer.group_discard(group_name(channel), self.channel_name)
            await self.send_json({"type": "unsubscribed", "channel": public})
        else:
            await self._fail("invalid_op", "op must be one of subscribe, unsubscribe, auth, ping.")

    async def _subscribe(self, public: str) -> None:
        if public == "account":
            if self.account is None:
                await self._fail("not_authenticated", "The account channel needs an API key or a signed-in session.",
                                 subscription=public)  # fmt: skip
                return
            channel = account_channel(self.account.pk)
        elif public.startswith("market."):
            instrument = await database_sync_to_async(selectors.stream_instrument)(symbol=public[len("market.") :])
            if instrument is None:
                await self._fail(
                    "unknown_instrument", f"No instrument {public[len('market.') :]!r}.", subscription=public
                )
                return
            channel = market_channel(instrument.pk)
        else:
            await self._fail("unknown_channel", "Channels: market.<SYMBOL>, account.", subscription=public)
            return
        if channel not in self.subs and len(self.subs) >= MAX_SUBSCRIPTIONS:
            await self._fail("too_many_subscriptions", f"At most {MAX_SUBSCRIPTIONS} channels per connection.")
            return
        # Join the group before reading the snapshot: a message numbered after the snapshot is
        # then either delivered or filled from the table, never lost between the two.
        await self.channel_layer.group_add(group_name(channel), self.channel_name)
        await self._send_snapshot(channel, public)

    async def _send_snapshot(self, channel: str, public: str) -> None:
        if channel.startswith("market."):
            instrument = await database_sync_to_async(selectors.stream_instrument_by_id)(
                instrument_id=int(channel.split(".")[1])
            )
            seq, data = await database_sync_to_async(selectors.stream_market_snapshot)(instrument=instrument)
        else:
            seq, data = await database_sync_to_async(selectors.stream_account_snapshot)(account=self.account)
        self.subs[channel] = {"public": public, "seq": seq}
        await self.send_json({"channel": public, "type": "snapshot", "seq": seq, "data": data})

    async def stream_event(self, event: dict) -> None:
        """A committed message from the channel layer (publish._deliver or relay)."""
        channel, seq = event["channel"], event["seq"]
        sub = self.subs.get(channel)
        if sub is None or seq <= sub["seq"]:
            return
        if seq > sub["seq"] + 1:
            missing = await database_sync_to_async(selectors.stream_events_between)(
                channel=channel, after=sub["seq"], upto=seq - 1
            )
            if missing is None:
                await self._send_snapshot(channel, sub["public"])
                return
            for e in missing:
                await self._send(sub, e.seq, e.type, e.data)
        if "text" in event and event["text"].startswith(f'{{"channel": "{sub["public"]}"'):
            sub["seq"] = seq
            await self.send(text_data=event["text"])  # encoded once by the publisher
        else:
            await self._send(sub, seq, event["kind"], event["data"])

    async def _send(self, sub: dict, seq: int, kind: str, data: dict) -> None:
        sub["seq"] = seq
        await self.send_json({"channel": sub["public"], "type": kind, "seq": seq, "data": data})
