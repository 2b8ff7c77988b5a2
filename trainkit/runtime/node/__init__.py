"""The node service: one per machine (or per embedded runtime).

- ``node_service``: the process: its inbox loop, workers, the store service;
- ``control_plane``: leases, actors, placement groups, the node table (embedded or head);
- ``actor_table``: every actor's state, along its transition table (pure);
- ``scheduler``: resources, leases and placement groups (pure);
- ``zygote``: the forkserver that forks workers;
- ``machine``: what this machine offers (GPUs, store size) and session names.
"""
