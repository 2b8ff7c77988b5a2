"""Unit tests of the control plane on its own: leases, owner death, the actor lifecycle and
placement groups, on a fake node (its ``ControlHost``) that records what the control plane
asks of it (no process, no socket)."""

from __future__ import annotations

from typing import Any

import pytest

from trainkit.runtime.node.control_plane import ControlPlane
from trainkit.runtime.node.control_plane import _Lease
from trainkit.runtime.node.control_plane import _WorkerProc
from trainkit.runtime.wire.protocol import Msg
from trainkit.runtime.wire.protocol import new_id

OWNER = "ipc://owner"


class FakeNode:
    """The node service's side of the control plane (a ``ControlHost``), recorded; the
    control plane under test is ``self.control``, and the tests call it through ``node``
    (``__getattr__``) as the node service's handlers would."""

    def __init__(self, cpus: float = 2.0) -> None:
        self.node_id = "n1"
        self.unwaited: list[_Lease] = []
        self.sent: list[tuple[str, tuple[Any, ...]]] = []
        self.to_assign: list[_Lease] = []
        self.killed: list[tuple[_WorkerProc, str]] = []
        self.released: list[_WorkerProc] = []
        self.workers: dict[bytes, _WorkerProc] = {}
        self.control = ControlPlane(self)
        self.control.scheduler.add_node("n1", {"CPU": cpus})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["control"], name)

    def send(self, addr: str, msg: tuple[Any, ...]) -> None:
        self.sent.append((addr, msg))

    def reply(self, addr: str, req_id: int, ok: bool, payload: Any) -> None:
        self.sent.append((addr, (Msg.REPLY, req_id, ok, payload)))

    def local_assign(self, lease: _Lease) -> None:
        self.to_assign.append(lease)

    def local_unwait(self, lease: _Lease) -> None:
        self.unwaited.append(lease)

    def preloaded_modules(self) -> list[str]:
        return []

    def local_kill_worker(self, w: _WorkerProc, reason: str) -> None:
        self.killed.append((w, reason))

    def local_release(self, w: _WorkerProc) -> None:
        self.released.append(w)

    def notify_process_died(self, addr: str, cause: str) -> None:
        pass

    def notify_node_died(self, node_id: str, cause: str) -> None:
        pass

    def find_worker(self, worker_id: bytes) -> _WorkerProc | None:
        return self.workers.get(worker_id)

    # ------------------------------------------------------------------ test helpers
    def give_worker(self) -> _WorkerProc:
        """The node forks a worker for the oldest lease waiting for one."""
        lease = self.to_assign.pop(0)
        wid = new_id()
        w = _WorkerProc(wid, 0, -1, -1, exec_addr=f"ipc://exec-{wid.hex()}",
                        ctl_addr=f"ipc://ctl-{wid.hex()}", ready=True)
        self.workers[wid] = w
        assert self.assigned(lease, w)
        return w

    def messages(self, kind: int) -> list[tuple[str, tuple[Any, ...]]]:
        out = [(a, m) for a, m in self.sent if m[0] == kind]
        self.sent = [(a, m) for a, m in self.sent if m[0] != kind]
        return out

    def free_cpus(self) -> float:
        return self.scheduler.available_resources().get("CPU", 0.0)


@pytest.fixture
def node() -> FakeNode:
    return FakeNode()


def _lease(node: FakeNode, owner: str = OWNER, cpus: float = 1.0) -> bytes:
    lease_id = new_id()
    node.on_request_lease(lease_id, owner, {"CPU": cpus}, None)
    return lease_id


# ---------------------------------------------------------------------- leases


def test_a_lease_is_granted_on_this_node_and_its_cpus_return_with_it(node: FakeNode) -> None:
    lease_id = _lease(node)
    assert [ls.lease_id for ls in node.to_assign] == [lease_id]
    w = node.give_worker()
    assert node.free_cpus() == 1.0
    node.on_return_lease(lease_id)
    assert node.released == [w] and node.free_cpus() == 2.0 and lease_id not in node.leases


def test_a_request_beyond_the_cluster_waits_then_is_granted_when_cpus_free(
        node: FakeNode) -> None:
    first, second, third = _lease(node), _lease(node), _lease(node)
    assert [ls.lease_id for ls in node.to_assign] == [first, second]
    node.give_worker()
    node.give_worker()
    node.on_return_lease(first)
    assert [ls.lease_id for ls in node.to_assign] == [third]


def test_an_impossible_request_fails_at_once(node: FakeNode) -> None:
    lease_id = new_id()
    node.on_request_lease(lease_id, OWNER, {"CPU": 8.0}, None)
    (addr, msg), = node.messages(Msg.LEASE_FAILED)
    assert addr == OWNER and msg[1] == lease_id and "CPU" in str(msg[2])


def test_a_dead_owners_queued_requests_go_and_its_workers_are_killed(node: FakeNode) -> None:
    running, _queued_a, _queued_b = _lease(node, cpus=2.0), _lease(node), _lease(node)
    w = node.give_worker()
    node.process_gone(OWNER, "SIGKILL", node.node_id)
    assert node.killed == [(w, "their owner died (SIGKILL)")]
    assert set(node.leases) == {running}  # the killed worker's exit settles it
    node.worker_gone(w, "killed", node.node_id)
    assert node.leases == {} and node.free_cpus() == 2.0
    assert node.messages(Msg.WORKER_DIED) == [(OWNER, (Msg.WORKER_DIED, running, "killed"))]


def test_a_blocked_worker_lends_its_cpus_until_it_unblocks(node: FakeNode) -> None:
    _lease(node, cpus=2.0)
    w = node.give_worker()
    waiting = _lease(node)
    assert not node.to_assign
    node.on_worker_blocked(w.worker_id)
    assert [ls.lease_id for ls in node.to_assign] == [waiting]
    node.on_worker_unblocked(w.worker_id)


# ---------------------------------------------------------------------- actors


def _create_actor(node: FakeNode, *, restarts: int = 0,
                  name: tuple[str, str] | None = None) -> bytes:
    actor_id = new_id()
    node.on_create_actor(1, OWNER, actor_id, "A", name, ("blob", b"", [], 1), {"CPU": 1.0},
                         None, restarts, {"name": "A", "methods": ()})
    (_, reply), = node.messages(Msg.REPLY)
    assert reply[2] is True, reply
    return actor_id


def _states(node: FakeNode) -> list[str]:
    return [m[2] for _, m in node.messages(Msg.ACTOR_STATE)]


def test_an_actor_is_placed_then_alive_then_restarted_then_dead(node: FakeNode) -> None:
    actor_id = _create_actor(node, restarts=1)
    w = node.give_worker()
    node.on_actor_ready(actor_id, w.worker_id)
    assert _states(node) == ["alive"]
    node.worker_gone(w, "SIGKILL", node.node_id)  # first crash: it may restart
    assert _states(node) == ["restarting"] and len(node.to_assign) == 1
    w2 = node.give_worker()
    node.on_actor_ready(actor_id, w2.worker_id)
    node.worker_gone(w2, "SIGKILL again", node.node_id)
    assert _states(node) == ["alive", "dead"]
    record = node.actors.get(actor_id)
    assert record is not None and record.cause == "SIGKILL again"
    assert node.free_cpus() == 2.0


def test_a_killed_actor_is_not_restarted_and_keeps_the_kill_as_its_cause(
        node: FakeNode) -> None:
    actor_id = _create_actor(node, restarts=-1)
    w = node.give_worker()
    node.on_actor_ready(actor_id, w.worker_id)
    _states(node)
    node.on_kill_actor(actor_id, True)
    assert node.killed == [(w, "it was killed with kill()")]
    node.worker_gone(w, "SIGKILL", node.node_id)
    assert _states(node) == ["dead"] and not node.to_assign
    record = node.actors.get(actor_id)
    assert record is not None and record.cause == "it was killed with kill()"


def test_a_dead_owners_actors_die_unless_detached(node: FakeNode) -> None:
    mortal = _create_actor(node)
    detached = new_id()
    node.on_create_actor(2, OWNER, detached, "D", ("ns", "d"), ("blob", b"", [], 1),
                         {"CPU": 1.0}, None, 0, {"name": "D", "methods": (), "detached": True})
    node.messages(Msg.REPLY)
    node.process_gone(OWNER, "its driver exited", node.node_id)
    mortal_record, detached_record = node.actors.get(mortal), node.actors.get(detached)
    assert mortal_record is not None and not mortal_record.live
    assert detached_record is not None and detached_record.live


def test_a_name_is_refused_while_its_actor_lives(node: FakeNode) -> None:
    _create_actor(node, name=("ns", "svc"))
    node.on_create_actor(7, OWNER, new_id(), "B", ("ns", "svc"), ("blob", b"", [], 1),
                         {"CPU": 1.0}, None, 0, {"name": "B", "methods": ()})
    (_, reply), = node.messages(Msg.REPLY)
    assert reply[1:3] == (7, False) and "already exists" in str(reply[3])


# ---------------------------------------------------------------------- placement groups


def test_a_group_is_waited_for_and_its_removal_kills_what_runs_in_it(node: FakeNode) -> None:
    node.on_create_pg(1, OWNER, "pg1", [{"CPU": 1.0}, {"CPU": 1.0}], "PACK", "")
    node.on_wait_pg(2, OWNER, "pg1")
    replies = [m for _, m in node.messages(Msg.REPLY)]
    assert [r[1:3] for r in replies] == [(1, True), (2, True)]
    lease_id = new_id()
    node.on_request_lease(lease_id, OWNER, {"CPU": 1.0}, ("pg1", 0))
    w = node.give_worker()
    node.on_remove_pg(3, OWNER, "pg1")
    assert node.killed == [(w, "its placement group pg1 was removed")]
    node.worker_gone(w, "killed", node.node_id)
    assert node.free_cpus() == 2.0


def test_a_wait_on_a_group_that_cannot_form_yet_is_answered_when_it_does(
        node: FakeNode) -> None:
    _lease(node, cpus=2.0)
    w = node.give_worker()
    node.on_create_pg(1, OWNER, "pg2", [{"CPU": 2.0}], "PACK", "")
    node.on_wait_pg(2, OWNER, "pg2")
    assert [m[1:3] for _, m in node.messages(Msg.REPLY)] == [(1, True)]
    node.on_return_lease(w.lease_id)  # type: ignore[arg-type]
    assert [m[1:3] for _, m in node.messages(Msg.REPLY)] == [(2, True)]
