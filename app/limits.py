"""Inbound rate limiting: a token bucket per webhook token, checked before the store is
touched, so a leaked or runaway caller cannot fill the queue (``BRIDGE_RATE_LIMIT``)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class RateLimiter:
    """``rate`` requests per second per key, with bursts of up to ``burst``."""

    rate: float
    burst: float
    _buckets: dict[int, _Bucket] = field(default_factory=dict)

    def retry_after(self, key: int) -> int | None:
        """Take one request from ``key``'s bucket: None when allowed, else the whole
        seconds to wait (for a Retry-After header)."""
        now = time.monotonic()
        bucket = self._buckets.setdefault(key, _Bucket(self.burst, now))
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return None
        return max(1, math.ceil((1 - bucket.tokens) / self.rate))
