"""The wire: every message kind has named fields, and every handler takes exactly those."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from trainkit.exceptions import TrainkitInternalError
from trainkit.runtime.core.actor_caller import ActorCaller
from trainkit.runtime.core.core_worker import CoreWorker
from trainkit.runtime.core.ownership import OwnershipTable
from trainkit.runtime.core.requests import RequestTracker
from trainkit.runtime.core.task_submitter import TaskSubmitter
from trainkit.runtime.core.worker_process import Worker
from trainkit.runtime.node.control_plane import ControlPlane
from trainkit.runtime.node.node_service import NodeService
from trainkit.runtime.node.store_service import StoreService
from trainkit.runtime.node.worker_pool import WorkerPool
from trainkit.runtime.wire import protocol as _protocol
from trainkit.runtime.wire.protocol import FIELDS
from trainkit.runtime.wire.protocol import Msg
from trainkit.runtime.wire.protocol import check
from trainkit.runtime.wire.protocol import msg_name

KINDS = {v: k for k, v in vars(Msg).items() if k.isupper()}
# Handled outside the tables: EXIT wakes a loop that then ends, NODE_READY is a driver's
# closure while it starts its node.
UNTABLED = {Msg.EXIT, Msg.NODE_READY}

_NODE_PARTS: dict[str, type] = {"": NodeService, "pool": WorkerPool, "objects": StoreService}
_PARTS: dict[str, type] = {"": CoreWorker, "requests": RequestTracker, "tasks": TaskSubmitter,
                           "calls": ActorCaller, "table": OwnershipTable}


def _handlers() -> list[tuple[int, str, Callable[..., Any]]]:
    out: list[tuple[int, str, Callable[..., Any]]] = []
    for kind, (part, name) in NodeService.HANDLERS.items():
        cls = _NODE_PARTS[part]
        out.append((kind, f"{cls.__name__}.{name}", getattr(cls, name)))
    for kind, name in ControlPlane.CONTROL_HANDLERS.items():
        out.append((kind, f"ControlPlane.{name}", getattr(ControlPlane, name)))
    for kind, name in {**Worker.HANDLERS, **Worker.CORE_HANDLERS}.items():
        out.append((kind, f"Worker.{name}", getattr(Worker, name)))
    for kind, (part, name, _) in CoreWorker.HANDLERS.items():
        cls = _PARTS[part]
        out.append((kind, f"{cls.__name__}.{name}", getattr(cls, name)))
    return out


def test_every_kind_has_fields_and_every_fields_entry_a_kind() -> None:
    assert set(FIELDS) == set(KINDS)
    assert len(KINDS) == len(vars(Msg)) - sum(1 for k in vars(Msg) if not k.isupper())


def test_every_kind_is_handled_somewhere() -> None:
    handled = {kind for kind, _, _ in _handlers()} | UNTABLED
    assert set(KINDS) - handled == set(), [msg_name(k) for k in set(KINDS) - handled]


@pytest.mark.parametrize("kind, where, fn", _handlers(),
                         ids=lambda v: msg_name(v) if isinstance(v, int) else str(v)[:40])
def test_each_handler_takes_its_kinds_fields_by_name(kind: int, where: str,
                                                      fn: Callable[..., Any]) -> None:
    params = list(inspect.signature(fn).parameters.values())[1:]  # after self
    got = tuple(p.name + ("?" if p.default is not inspect.Parameter.empty else "")
                for p in params)
    assert got == FIELDS[kind], f"{where} takes {got}; {msg_name(kind)} carries {FIELDS[kind]}"


def test_a_message_that_does_not_fit_its_kind_is_refused_naming_it() -> None:
    check((Msg.STORE_PIN, 1, "ipc://a", b"oid"))  # optional fields left out
    check((Msg.STORE_PIN, 1, "ipc://a", b"oid", "node", 10))
    with pytest.raises(TrainkitInternalError, match=r"a STORE_PIN message has 2 fields, not "
                                                   r"3-5 \(req_id, reply_to, oid"):
        check((Msg.STORE_PIN, 1, "ipc://a"))
    with pytest.raises(TrainkitInternalError, match="unknown kind 999"):
        check((999, "x"))


def test_the_suite_checks_every_message_it_sends() -> None:
    assert _protocol.CHECK_WIRE  # tests/conftest.py sets TRAINKIT_WIRE_CHECK=1 first
