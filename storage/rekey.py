"""`python -m storage.rekey REDIS_URL OLD NEW`: the command `storage.redis.rekey` runs."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    from .redis.rekey import main

    sys.exit(main())
