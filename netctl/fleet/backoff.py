"""Reconnect delays: exponential, capped, with jitter, so that a restarted etcd is not hit
by every agent of the fleet in the same instant."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays base, 2*base, 4*base... up to ``cap``, each drawn uniformly from the upper
    half of its step ("equal jitter": never less than half the step, so a failing etcd is
    not hammered, and never the same for two agents).  ``reset`` after a success."""

    def __init__(self, base: float = 0.25, cap: float = 10.0,
                 rand: Callable[[], float] = random.random):
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base, self.cap, self._rand = base, cap, rand
        self.failures = 0

    def step(self) -> float:
        """The delay before the next attempt (the ceiling of this step doubles after it)."""
        ceiling = min(self.cap, self.base * (2 ** min(self.failures, 30)))
        self.failures += 1
        return ceiling / 2 + self._rand() * ceiling / 2

    def reset(self) -> None:
        self.failures = 0
