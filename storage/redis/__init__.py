"""The Redis backend: `RedisStore` (standalone, behind Sentinel, or Cluster: a mode of it)
with everything the Store contract asks beside runs, each in a module of its own:

    store.py       RedisStore: runs, events, leases (scripts/create|commit|lease|restore.lua)
    _indexes.py    indexes of runs, kept right through any crash (Cluster too); pending charges
    _integrity.py  a run whose history the server lost is refused
    paging.py      keyset pages of run listings (scripts/id_search.lua)
    live.py        the live channel
    ledger.py      scope ledgers and set limits (scripts/scope_charge.lua)
    limiter.py     rate limits (scripts/ratelimit.lua)
    queue.py       the run queue (Streams) and worker heartbeats
    rekey.py       moving runs between key prefixes
    _connect.py    URLs, prefixes, retries      _errors.py   redis-py's errors, mapped to ours
    _connection.py held connections for the hot path
"""

from ._connect import PREFIX_ALPHABET, Client, check_prefix, redact
from ._errors import server_problems
from .store import RedisStore

__all__ = ["PREFIX_ALPHABET", "Client", "RedisStore", "check_prefix", "redact", "server_problems"]

RedisStore.__module__ = "storage"  # reprs read storage.RedisStore, where it is exported
