"""The bench's ASGI app: the exchange's own (HTTP and /ws/v1/stream) plus /bench/bare, the
smallest Channels consumer there is (join a group, forward each message as it comes), the
ceiling bench/stream.py compares the feed with. Never mounted outside the bench."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_application = get_asgi_application()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from streams.consumers import StreamConsumer  # noqa: E402

BARE_GROUP = "bench-bare"


class BareConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.channel_layer.group_add(BARE_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(BARE_GROUP, self.channel_name)

    async def bare_message(self, event: dict) -> None:
        await self.send(text_data=event["text"])


application = ProtocolTypeRouter(
    {
        "http": django_application,
        "websocket": URLRouter(
            [path("ws/v1/stream", StreamConsumer.as_asgi()), path("bench/bare", BareConsumer.as_asgi())]
        ),
    }
)
