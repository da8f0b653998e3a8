"""Without Redis (the embedded `make run`): each web process relays committed messages from
the StreamEvent table to its own subscribers, through the in-memory channel layer.

The Celery worker that publishes runs in another process, which an in-memory layer cannot
reach; the table can. One task per web process polls it every RELAY_INTERVAL seconds.
Ids are taken before commit, so on PostgreSQL a smaller id may commit after a larger one was
read: the relay reads RELAY_LOOKBACK ids back and skips those it sent. (Anything it still
misses is filled from the table by the subscriber's consumer when the channel's next message
arrives.)
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from .publish import event_message, group_name
from .selectors import stream_events_after, stream_last_event_id

log = logging.getLogger(__name__)

RELAY_INTERVAL = 0.05  # seconds
RELAY_LOOKBACK = 200  # ids
_tasks: dict[int, asyncio.Task] = {}


def relay_ensure() -> None:
    """Start this process's relay on the running event loop, once."""
    loop = asyncio.get_running_loop()
    task = _tasks.get(id(loop))
    if task is None or task.done():
        _tasks[id(loop)] = loop.create_task(_relay())


async def _relay() -> None:
    layer = get_channel_layer()
    last_id = await database_sync_to_async(stream_last_event_id)()
    sent: deque[int] = deque(maxlen=4 * RELAY_LOOKBACK)
    sent_set: set[int] = set()
    while True:
        try:
            events = await database_sync_to_async(stream_events_after)(last_id=max(0, last_id - RELAY_LOOKBACK))
            for e in events:
                if e.id in sent_set:
                    continue
                if len(sent) == sent.maxlen:
                    sent_set.discard(sent[0])
                sent.append(e.id)
                sent_set.add(e.id)
                last_id = max(last_id, e.id)
                await layer.group_send(group_name(e.channel), event_message(e))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("stream relay: reading or sending failed; retrying")
            await asyncio.sleep(1)
        await asyncio.sleep(RELAY_INTERVAL)
