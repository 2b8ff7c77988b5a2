"""Which objects to spill so that a new object finds one contiguous range in the arena.

Pure: the object store describes the arena as :class:`Segment` values and applies the
:class:`Hole` this module picks; nothing here touches memory, files or the store.

Spilling in plain least-recently-used order until an allocation succeeds frees the right
amount of memory in the wrong places: with readers pinning every other object, it writes
every unpinned object to disk and still leaves no range large enough. A hole is a run of
*adjacent* free and spillable ranges, so the cheapest one is found by sliding a window over
the arena in offset order (:func:`cheapest_hole`).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Sequence

__all__ = ["Hole", "Segment", "cheapest_hole", "largest_hole"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Segment:
    """A range of the arena that a new object could use: free, or one spillable object.

    Ranges that cannot be used (pinned objects, objects being written) are left out of the
    list; a gap between two consecutive segments is such a range, and no hole crosses it.

    Args:
        offset: start of the range in the arena.
        length: bytes of the range (the allocated, page-rounded size for an object).
        object_id: the object occupying it, or None for free space.
        write_bytes: bytes that spilling it writes to disk: its size, or 0 when an earlier
            spill file is still valid (re-spilling then only releases the range).
        last_use: the object's recency, larger is more recent (ignored for free space).
    """

    offset: int
    length: int
    object_id: bytes | None = None
    write_bytes: int = 0
    last_use: int = 0

    @property
    def end(self) -> int:
        """First byte after the range."""
        return self.offset + self.length


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Hole:
    """The victims to spill so that ``[offset, offset + length)`` becomes one free range.

    Args:
        offset: start of the range.
        length: its size in bytes (at least the size asked for).
        victims: ids of the objects to spill, in offset order (empty if it is free already).
        write_bytes: bytes that spilling the victims writes to disk.
    """

    offset: int
    length: int
    victims: tuple[bytes, ...]
    write_bytes: int


def cheapest_hole(segments: Sequence[Segment], need: int) -> Hole | None:
    """The run of adjacent segments of at least ``need`` bytes that is cheapest to free.

    Cost, compared in this order: the recency of the run's most recently used victim (so,
    as with plain least-recently-used spilling, no object is spilled while an older one
    would do), then the bytes spilling writes to disk (what the waiting ``put`` pays; an
    object whose spill file is still valid costs nothing), then the bytes evicted from
    memory (what later reads may have to restore); on a tie, the run that ends first. Every
    term only grows as a run grows, so for each right end the shortest run that is long
    enough is the best one, and a two-pointer scan finds the optimum in
    ``O(len(segments))``.

    Args:
        segments: free and spillable ranges, sorted by offset, not overlapping.
        need: bytes wanted (> 0), already rounded as the allocator rounds.

    Returns:
        The hole, or None when no run of adjacent segments is ``need`` bytes long (only a
        fallback outside the arena can hold the object then).

    Example:
        >>> free = Segment(offset=0, length=4096)
        >>> old = Segment(offset=4096, length=4096, object_id=b"a", write_bytes=4096)
        >>> cheapest_hole([free, old], 8192).victims
        (b'a',)
    """
    best: Hole | None = None
    best_key: tuple[int, int, int] | None = None
    start = 0
    write = evicted = 0
    # Indices of victims in the window whose last_use is decreasing: the front is the most
    # recently used victim of the window (a sliding-window maximum).
    newest: deque[int] = deque()
    for end, seg in enumerate(segments):
        if end > start and seg.offset != segments[end - 1].end:
            # Something fixed lies between the two: no hole crosses it.
            start, write, evicted = end, 0, 0
            newest.clear()
        if seg.object_id is not None:
            write += seg.write_bytes
            evicted += seg.length
            while newest and segments[newest[-1]].last_use <= seg.last_use:
                newest.pop()
            newest.append(end)
        # Drop segments on the left while the rest is still long enough.
        while start < end and seg.end - segments[start + 1].offset >= need:
            first = segments[start]
            if first.object_id is not None:
                write -= first.write_bytes
                evicted -= first.length
                if newest and newest[0] == start:
                    newest.popleft()
            start += 1
        length = seg.end - segments[start].offset
        if length < need:
            continue
        key = (segments[newest[0]].last_use if newest else -1, write, evicted)
        if best_key is None or key < best_key:
            best_key = key
            best = Hole(
                offset=segments[start].offset,
                length=length,
                victims=tuple(s.object_id for s in segments[start:end + 1]
                              if s.object_id is not None),
                write_bytes=write,
            )
    return best


def largest_hole(segments: Sequence[Segment]) -> int:
    """Bytes of the longest run of adjacent segments: the largest range spilling can free."""
    largest = run = 0
    previous_end: int | None = None
    for seg in segments:
        run = run + seg.length if seg.offset == previous_end else seg.length
        largest = max(largest, run)
        previous_end = seg.end
    return largest
