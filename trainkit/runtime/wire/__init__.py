"""The wire: what processes say to each other and how it travels.

- ``protocol``: message kinds, their named fields (``FIELDS``), the message flow, ids;
- ``serialization``: values and functions to bytes (pickle 5, cloudpickle), zero-copy buffers;
- ``transport``: zmq inboxes and outboxes between processes;
- ``auth``: signed frames between machines of a cluster;
- ``local_channel``: a process's unix socket to its node's object store.

Below everything else in the runtime: it imports no other part.
"""
