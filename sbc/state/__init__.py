"""Shared state: counters, bans, trust, leases, statistics, bindings and events.

:mod:`sbc.state.base` is the interface the core uses (ops, results, :class:`Store`,
:class:`StoreError`); :mod:`sbc.state.memory` the embedded store; :mod:`sbc.state.cache` each
node's local ban cache; :mod:`sbc.state.redis_store` the Redis store (edge code: it imports redis
and runs a listener thread, so only the composition root imports it).
"""
