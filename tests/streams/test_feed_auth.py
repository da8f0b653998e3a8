"""Who may open the account channel, in process (channels' WebsocketCommunicator, in-memory
layer): an API key, or a browser session of this site, verified by its code when the user
has an authenticator."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.test import Client
from django_otp.plugins.otp_totp.models import TOTPDevice

from config.asgi import application
from marketplace import services
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


def ask_account(headers: list[tuple[bytes, bytes]]) -> dict:
    # channels.testing's WebsocketCommunicator would import daphne (its live server); this is
    # the same few ASGI messages.
    async def run() -> dict:
        scope = {"type": "websocket", "path": "/ws/v1/stream", "headers": headers, "query_string": b"",
                 "subprotocols": [], "client": ["127.0.0.1", 1], "server": ["testserver", 80]}  # fmt: skip
        ws = ApplicationCommunicator(application, scope)
        await ws.send_input({"type": "websocket.connect"})
        assert (await ws.receive_output(30))["type"] == "websocket.accept"
        await ws.send_input(
            {"type": "websocket.receive", "text": json.dumps({"op": "subscribe", "channel": "account"})}
        )
        reply = json.loads((await ws.receive_output(30))["text"])
        await ws.send_input({"type": "websocket.disconnect", "code": 1000})
        await ws.wait(30)
        return reply

    return async_to_sync(run)()


def signed_in(username: str) -> tuple[str, object]:
    user, account = services.account_signup(
        username=username, password="feed-test-pass-2026", account_name=f"{username} co", is_buyer=True,
        is_provider=False,
    )  # fmt: skip
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value, account


def site_headers(session: str, origin: str = "http://testserver") -> list[tuple[bytes, bytes]]:
    return [(b"host", b"testserver"), (b"origin", origin.encode()), (b"cookie", f"sessionid={session}".encode())]


def test_a_session_of_this_site_opens_its_own_account_channel():
    session, account = signed_in("feeduser")
    reply = ask_account(site_headers(session))
    assert (reply["type"], reply["data"]["account"]) == ("snapshot", account.slug)


def test_a_session_cookie_sent_by_another_site_counts_for_nothing():
    session, _ = signed_in("feeduser2")
    assert ask_account(site_headers(session, origin="http://evil.example"))["code"] == "not_authenticated"


def test_a_session_without_its_second_factor_counts_for_nothing():
    session, account = signed_in("feeduser3")
    user = account.members.get()
    TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    assert ask_account(site_headers(session))["code"] == "not_authenticated"


def test_an_api_key_opens_the_account_channel_and_a_bad_one_is_refused():
    account = factories.AccountFactory(is_buyer=True)
    _, raw = factories.api_key(account)
    reply = ask_account([(b"authorization", f"Bearer {raw}".encode())])
    assert reply["data"]["account"] == account.slug
    refused = ask_account([(b"authorization", b"Bearer cy_nope_nope")])
    assert refused["code"] == "invalid_api_key"
