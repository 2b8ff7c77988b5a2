"""Unit tests of the control plane's actor table: its transitions and what it publishes."""

from __future__ import annotations

from typing import Any

import pytest

from trainkit.exceptions import InvalidTransitionError
from trainkit.runtime.node.actor_table import TRANSITIONS
from trainkit.runtime.node.actor_table import ActorRecord
from trainkit.runtime.node.actor_table import ActorTable
from trainkit.runtime.wire.protocol import ActorStatus
from trainkit.runtime.wire.protocol import Msg
from trainkit.runtime.wire.protocol import new_id

OWNER = "ipc://owner"


class _Worker:
    exec_addr = "ipc://worker-exec"


def _table() -> tuple[ActorTable, list[tuple[str, tuple[Any, ...]]]]:
    sent: list[tuple[str, tuple[Any, ...]]] = []
    return ActorTable(lambda addr, msg: sent.append((addr, msg))), sent


def _actor(name: str = "A", registered: tuple[str, str] | None = None,
           restarts: int = 0) -> ActorRecord:
    return ActorRecord(new_id(), OWNER, name, registered, ("blob",), {"CPU": 1.0}, None,
                       restarts, {})


def _states(sent: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[str, str, str | None]]:
    out = [(addr, msg[2], msg[3]) for addr, msg in sent if msg[0] == Msg.ACTOR_STATE]
    sent.clear()
    return out


def test_every_state_change_goes_to_the_owner_and_subscribers() -> None:
    table, sent = _table()
    actor = _actor()
    table.add(actor)
    table.subscribe(actor.actor_id, "ipc://borrower")
    assert _states(sent) == [("ipc://borrower", "pending", None)]
    actor.worker = _Worker()
    table.set_status(actor, ActorStatus.ALIVE)
    assert sorted(_states(sent)) == [("ipc://borrower", "alive", "ipc://worker-exec"),
                                     (OWNER, "alive", "ipc://worker-exec")]
    table.set_status(actor, ActorStatus.DEAD, "killed")
    assert sorted(_states(sent)) == [("ipc://borrower", "dead", None), (OWNER, "dead", None)]
    assert not actor.subscribers and actor.spec == () and actor.cause == "killed"


@pytest.mark.parametrize("start", list(ActorStatus))
@pytest.mark.parametrize("end", list(ActorStatus))
def test_only_the_transitions_of_the_table_are_allowed(start: ActorStatus,
                                                       end: ActorStatus) -> None:
    table, _ = _table()
    actor = _actor()
    table.add(actor)
    actor.status = start
    if end in TRANSITIONS[start]:
        table.set_status(actor, end)
        assert actor.status is end
    else:
        with pytest.raises(InvalidTransitionError,
                           match=f"move to {end.name} is not allowed in state {start.name}"):
            table.set_status(actor, end)
        assert actor.status is start


def test_a_dead_actor_restarts_while_it_may_then_dies() -> None:
    table, sent = _table()
    actor = _actor(restarts=1)
    table.add(actor)
    table.set_status(actor, ActorStatus.ALIVE)
    assert table.died(actor, "SIGKILL") is True
    assert actor.status is ActorStatus.RESTARTING and actor.restarts_left == 0
    table.set_status(actor, ActorStatus.ALIVE)
    assert table.died(actor, "SIGKILL again") is False
    assert actor.status is ActorStatus.DEAD and actor.cause == "SIGKILL again"
    assert [s for _, s, _ in _states(sent)] == ["alive", "restarting", "alive", "dead"]
    assert table.died(actor, "late news") is False  # already dead: nothing changes
    assert not sent


def test_a_killed_actor_dies_with_the_kill_as_its_cause_whatever_its_restarts() -> None:
    table, _ = _table()
    actor = _actor(restarts=-1)
    table.add(actor)
    actor.no_restart, actor.cause = True, "it was killed with kill()"
    assert table.died(actor, "SIGKILL") is False
    assert actor.status is ActorStatus.DEAD and actor.cause == "it was killed with kill()"


def test_a_name_is_taken_while_its_actor_lives_and_free_after() -> None:
    table, _ = _table()
    first = _actor(registered=("ns", "svc"))
    table.add(first)
    assert table.named_live(("ns", "svc")) is first
    assert table.live_names("ns") == ["svc"] and table.live_names("other") == []
    assert table.live_names(None) == [{"name": "svc", "namespace": "ns"}]
    with pytest.raises(ValueError, match="already exists in namespace 'ns'"):
        table.add(_actor(registered=("ns", "svc")))
    table.set_status(first, ActorStatus.DEAD, "done")
    assert table.named_live(("ns", "svc")) is None and table.live_names("ns") == []
    second = _actor(registered=("ns", "svc"))
    table.add(second)
    assert table.named_live(("ns", "svc")) is second


def test_subscribing_to_an_unknown_actor_answers_dead() -> None:
    table, sent = _table()
    table.subscribe(new_id(), "ipc://late")
    (addr, status, exec_addr), = _states(sent)
    assert (addr, status, exec_addr) == ("ipc://late", "dead", None)
