"""The node's shared-memory object store and how objects move.

- ``object_store``: one arena (a memfd), allocation, pins, spilling, fallback files;
- ``allocator`` and ``spill_policy``: the pure decisions it makes;
- ``object_layout``: how one object's bytes are laid out (zero-copy reads);
- ``copy_pool`` and ``stream_copy``: copying large buffers fast;
- ``transfer``: pulling an object from another node's store.

Uses the wire only: no core worker, no node service.
"""
