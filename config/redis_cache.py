"""The Redis cache backend: Django's, with one redis client per connection pool.

Django's RedisCacheClient builds a new `redis.Redis` for every cache operation, and building
one fills its table of response callbacks: a measurable share of a cheap request that makes a
few cache round trips (throttle, generations, snapshot, match de-duplication). A `redis.Redis`
is safe to share between threads (each command takes a connection from the pool), so one per
pool is kept. `redis_client()` gives that client to code that needs a pipeline (the API
throttle counts in one round trip); keys passed to it must come from `make_and_validate_key`.
"""

from __future__ import annotations

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.core.cache.backends.redis import RedisCacheClient


class ReusingRedisCacheClient(RedisCacheClient):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, object] = {}

    def get_client(self, key=None, *, write=False):
        pool = self._get_connection_pool(write)
        client = self._clients.get(id(pool))
        if client is None:
            client = self._clients[id(pool)] = self._client(connection_pool=pool)
        return client


class RedisCache(DjangoRedisCache):
    def __init__(self, server, params) -> None:
        super().__init__(server, params)
        self._class = ReusingRedisCacheClient

    def redis_client(self):
        return self._cache.get_client(write=True)
