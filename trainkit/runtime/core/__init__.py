"""The core worker: the part of the runtime that lives in every driver and worker process.

Its parts, each the one owner of its state (see each module):

- ``ownership.OwnershipTable``: refs this process owns or borrows, counts, borrowers, values;
- ``task_submitter.TaskSubmitter``: normal tasks: dependency waits, leases, retries, cancel;
- ``actor_caller.ActorCaller``: calls to actors: order, restarts, out of scope;
- ``requests.RequestTracker``: request ids, replies and their timeouts;
- ``effects.Effects``: what the parts decided, for the shell to carry out;
- the shell, ``core_worker.CoreWorker``: sockets, the I/O thread, the one lock.

The parts are pure: they change their state and record messages to send; only the shell
does I/O. Unit tests build them alone (tests/runtime/test_core_parts.py).
"""
