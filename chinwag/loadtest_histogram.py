"""A log-bucketed latency histogram (the HdrHistogram layout, in pure Python).

The load generator used to keep every latency in a list: memory grew with the run and
a thousand clients' worth of floats made full garbage collections stall it.  A histogram
holds a count per bucket instead, so it costs the same for ten messages or ten million,
and two of them merge by adding counts: that is how ``chinwag-loadtest --workers N``
combines its generator processes into one report.

Values are whole microseconds.  Below ``2**SUB_BITS`` every value has its own bucket;
above, each power of two is cut into ``2**(SUB_BITS-1)`` equal buckets, so a bucket is
never wider than 1/128 of its values (0.8 %) and any value up to years fits in a few
thousand buckets.  A percentile is reported as the highest value its bucket can hold
(HdrHistogram's "highest equivalent value"), never above the largest value recorded.
"""

from __future__ import annotations

import math
from typing import Any

SUB_BITS = 8
SUB = 1 << SUB_BITS  # values below this are exact
HALF = SUB >> 1


def bucket_of(value: int) -> int:
    """The bucket index of a non-negative integer."""
    if value < SUB:
        return value
    shift = value.bit_length() - SUB_BITS
    return SUB + (shift - 1) * HALF + ((value >> shift) - HALF)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The lowest and highest value that land in bucket ``index`` (inclusive)."""
    if index < SUB:
        return index, index
    shift, top = divmod(index - SUB, HALF)
    shift += 1
    low = (top + HALF) << shift
    return low, low + (1 << shift) - 1


class LogHistogram:
    """Counts per log bucket, plus the exact count, sum, minimum and maximum."""

    __slots__ = ("counts", "max", "min", "sum", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0
        self.sum = 0
        self.min: int | None = None
        self.max: int | None = None

    def record(self, value: int) -> None:
        if value < 0:
            value = 0  # clocks of one process never go backwards; a negative here is rounding
        i = bucket_of(value)
        self.counts[i] = self.counts.get(i, 0) + 1
        self.total += 1
        self.sum += value
        if self.min is None or value < self.min:
            self.min = value
        if self.max is None or value > self.max:
            self.max = value

    def merge(self, other: LogHistogram) -> None:
        """Add ``other``'s counts to this one (the result is what one histogram recording both would hold)."""
        for i, n in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + n
        self.total += other.total
        self.sum += other.sum
        if other.min is not None and (self.min is None or other.min < self.min):
            self.min = other.min
        if other.max is not None and (self.max is None or other.max > self.max):
            self.max = other.max

    def percentile(self, q: float) -> int | None:
        """The value at percentile ``q`` (0 to 100) by nearest rank, as its bucket's highest value."""
        if not self.total:
            return None
        rank = max(1, min(self.total, math.ceil(q / 100 * self.total)))
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                high = bucket_bounds(i)[1]
                assert self.max is not None
                return min(high, self.max)
        return self.max  # not reached: the counts add up to total

    def mean(self) -> float | None:
        return self.sum / self.total if self.total else None

    def buckets(self) -> list[tuple[int, int, int]]:
        """(low, high, count) per non-empty bucket, in order: what a plot of the distribution needs."""
        return [(*bucket_bounds(i), self.counts[i]) for i in sorted(self.counts)]

    def to_dict(self) -> dict[str, Any]:
        """A JSON- and pickle-friendly form, for sending from a worker process to the parent."""
        return {"counts": [[i, n] for i, n in sorted(self.counts.items())], "total": self.total,
                "sum": self.sum, "min": self.min, "max": self.max}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogHistogram:
        h = cls()
        h.counts = {int(i): int(n) for i, n in data["counts"]}
        h.total, h.sum, h.min, h.max = int(data["total"]), int(data["sum"]), data["min"], data["max"]
        if sum(h.counts.values()) != h.total:
            raise ValueError(f"histogram counts add up to {sum(h.counts.values())}, not its total {h.total}")
        return h
