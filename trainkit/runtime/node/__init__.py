"""The node service: one per machine (or per embedded runtime).

- ``node_service``: the process: its inbox loop, its drivers, and what ties its parts together;
- ``worker_pool``: the forkserver, forks, the idle pool, worker exits;
- ``worker_output``: what workers print, forwarded to the drivers in whole lines;
- ``store_service``: the object store, served to this machine's processes and other nodes;
- ``control_plane``: leases, actors, placement groups, the node table (embedded or head);
- ``actor_table``: every actor's state, along its transition table (pure);
- ``scheduler``: resources, leases and placement groups (pure);
- ``zygote``: the forkserver process that forks workers;
- ``machine``: what this machine offers (GPUs, store size) and session names.
"""
