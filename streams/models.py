"""The feeds' sequence numbers and outbox.

A StreamChannel row per channel (`market.<instrument id>`, `account.<account id>`) holds the
channel's last sequence number and, for a market channel, the book as of that number: a
subscriber's snapshot is that state, so a snapshot and the updates after it always join up.
Every message is a StreamEvent row written in the same transaction that advanced the
sequence, so a message exists only once its transaction committed, and a server that missed
one (a dropped channel-layer message, the relay of the embedded setup) reads it from here.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class StreamChannel(models.Model):
    name = models.CharField(max_length=64, primary_key=True)
    seq = models.PositiveBigIntegerField(default=0)
    state = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.name} @ {self.seq}"


class StreamEvent(models.Model):
    channel = models.CharField(max_length=64)
    seq = models.PositiveBigIntegerField()
    type = models.CharField(max_length=16)
    data = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["channel", "seq"], name="uniq_stream_event_seq")]
        indexes = [models.Index(fields=["created_at"], name="stream_event_created")]

    def __str__(self) -> str:
        return f"{self.channel} #{self.seq} {self.type}"
