"""Inbound rate limiting: a token bucket per key. One per webhook token, checked before
the store is touched, so a leaked or runaway caller cannot fill the queue
(``BRIDGE_RATE_LIMIT``); one per client address for the console's wrong sign-ins."""

from __future__ import annotations

import math
import time
from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class RateLimiter:
    """``rate`` requests per second per key, with bursts of up to ``burst``.

    With ``max_keys``, only that many keys are remembered: when keys come from clients
    (their addresses), memory stays bounded whatever they send. The key used least
    recently is forgotten first, which only gives it a full bucket again."""

    rate: float
    burst: float
    max_keys: int | None = None
    _buckets: dict[Hashable, _Bucket] = field(default_factory=dict)

    def retry_after(self, key: Hashable) -> int | None:
        """Take one request from ``key``'s bucket: None when allowed, else the whole
        seconds to wait (for a Retry-After header)."""
        bucket = self._refilled(key)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return None
        return max(1, math.ceil((1 - bucket.tokens) / self.rate))

    def exhausted(self, key: Hashable) -> bool:
        """Whether ``key``'s next request would be refused (nothing is taken)."""
        return self._refilled(key).tokens < 1

    def _refilled(self, key: Hashable) -> _Bucket:
        now = time.monotonic()
        bucket = self._buckets.pop(key, None) or _Bucket(self.burst, now)
        self._buckets[key] = bucket  # last in the dict: the most recently used
        if self.max_keys is not None and len(self._buckets) > self.max_keys:
            del self._buckets[next(iter(self._buckets))]
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        return bucket
