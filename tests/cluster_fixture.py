"""The `redis_cluster` fixture: one local 3-master Redis Cluster per test session.

Import it into a conftest.py or a test module's namespace:

    from tests.cluster_fixture import redis_cluster  # noqa: F401

Like `redis_server`, a missing redis-server or redis-cli fails the test under CI=true and
skips it elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .redis_cluster import RedisCluster

__all__ = ["redis_cluster"]


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One Redis Cluster for the session; tests isolate themselves by key prefix."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()
