"""First-fit range allocator for the node's shared-memory arena.

The allocator only does bookkeeping: it hands out ``[offset, offset + size)`` ranges of an
arena of ``capacity`` bytes and never touches memory itself. The object store
(:mod:`trainkit.runtime.store.object_store`) owns one and decides what to spill when it is full.
"""

from __future__ import annotations

import bisect

__all__ = ["ArenaAllocator"]


class ArenaAllocator:
    """Hands out aligned ranges of a fixed-size arena, first fit at the lowest offset.

    Free space is kept as maximal blocks (neighbours are coalesced on every ``free``), in a
    list sorted by offset so that ``free`` finds its neighbours with ``bisect`` in
    ``O(log n)``. First fit at the lowest offset keeps the live objects packed towards the
    start of the arena, which leaves the largest possible block at the end for big objects.

    Thread safety: none; the object store that owns it is single-threaded.

    Args:
        capacity: size of the arena in bytes (> 0).
        alignment: every offset and every allocated size is a multiple of this (a power of
            two). The store uses the page size so that readers can ``mmap`` one object's range.

    Raises:
        ValueError: ``capacity`` is not positive or ``alignment`` is not a power of two.

    Example:
        >>> alloc = ArenaAllocator(capacity=16384, alignment=4096)
        >>> alloc.allocate(100), alloc.allocate(5000)
        (0, 4096)
        >>> alloc.free(0)
        >>> alloc.allocate(4096)
        0
    """

    def __init__(self, capacity: int, alignment: int = 4096) -> None:
        if capacity <= 0:
            raise ValueError(f"`capacity` is {capacity}, but must be > 0 bytes")
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"`alignment` is {alignment}, but must be a power of two")
        self._capacity = capacity
        self._alignment = alignment
        # Free blocks: sorted offsets plus offset -> size. Two structures, because bisect
        # needs a plain sorted list and coalescing needs the size of a neighbour by offset.
        self._free_offsets: list[int] = [0]
        self._free_sizes: dict[int, int] = {0: capacity}
        self._allocated: dict[int, int] = {}
        self._used = 0

    @property
    def capacity(self) -> int:
        """Size of the arena in bytes."""
        return self._capacity

    @property
    def alignment(self) -> int:
        """Alignment of every offset and allocated size, in bytes."""
        return self._alignment

    @property
    def used_bytes(self) -> int:
        """Bytes in allocated blocks (sizes rounded up to the alignment)."""
        return self._used

    @property
    def free_bytes(self) -> int:
        """Bytes not allocated (possibly fragmented; see :meth:`largest_free_block`)."""
        return self._capacity - self._used

    @property
    def num_allocated(self) -> int:
        """Number of allocated blocks."""
        return len(self._allocated)

    def rounded_size(self, size: int) -> int:
        """The number of bytes ``allocate(size)`` takes from the arena."""
        if size < 0:
            raise ValueError(f"`size` is {size}, but must be >= 0 bytes")
        # A zero-byte block still gets one alignment unit so that its offset is unique.
        size = max(size, 1)
        return (size + self._alignment - 1) & ~(self._alignment - 1)

    def allocate(self, size: int) -> int | None:
        """Allocate ``size`` bytes (rounded up to the alignment; 0 counts as 1).

        Args:
            size: bytes wanted (>= 0).

        Returns:
            The offset of the block: the lowest offset where it fits, or None when no free
            block is large enough (the caller decides whether to spill and retry).

        Raises:
            ValueError: ``size`` is negative.
        """
        need = self.rounded_size(size)
        if need > self._capacity - self._used:
            return None
        sizes = self._free_sizes
        for i, offset in enumerate(self._free_offsets):
            block = sizes[offset]
            if block < need:
                continue
            del sizes[offset]
            if block == need:
                del self._free_offsets[i]
            else:
                # The remainder keeps its place in the sorted list: it starts after `offset`
                # and before the next free block.
                rest = offset + need
                self._free_offsets[i] = rest
                sizes[rest] = block - need
            self._allocated[offset] = need
            self._used += need
            return offset
        return None

    def free(self, offset: int) -> None:
        """Return the block at ``offset`` to the free list, merging it with free neighbours.

        Args:
            offset: an offset returned by :meth:`allocate` and not freed since.

        Raises:
            KeyError: ``offset`` is not the start of an allocated block.
        """
        try:
            size = self._allocated.pop(offset)
        except KeyError:
            raise KeyError(
                f"offset {offset} is not the start of an allocated block "
                f"({len(self._allocated)} blocks are allocated); was it freed twice?"
            ) from None
        self._used -= size
        offsets = self._free_offsets
        sizes = self._free_sizes
        i = bisect.bisect_left(offsets, offset)
        start, length = offset, size
        # Merge with the following free block when it starts right where this one ends.
        if i < len(offsets) and offsets[i] == offset + size:
            length += sizes.pop(offsets[i])
            del offsets[i]
        # Merge with the preceding free block when it ends right where this one starts.
        if i > 0 and offsets[i - 1] + sizes[offsets[i - 1]] == offset:
            start = offsets[i - 1]
            sizes[start] += length
        else:
            offsets.insert(i, start)
            sizes[start] = length

    def allocated_size(self, offset: int) -> int:
        """Bytes taken by the block at ``offset`` (its rounded size).

        Raises:
            KeyError: ``offset`` is not the start of an allocated block.
        """
        try:
            return self._allocated[offset]
        except KeyError:
            raise KeyError(f"offset {offset} is not the start of an allocated block") from None

    def largest_free_block(self) -> int:
        """Size in bytes of the largest free block (0 when the arena is full)."""
        return max(self._free_sizes.values(), default=0)

    def free_blocks(self) -> list[tuple[int, int]]:
        """The free blocks as ``(offset, size)`` pairs, sorted by offset (for tests and stats)."""
        return [(offset, self._free_sizes[offset]) for offset in self._free_offsets]
