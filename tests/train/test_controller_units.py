"""The pure parts of the controller: the failure policy, the state table, error grouping."""

from __future__ import annotations

from typing import Any
from typing import cast

import pytest

from trainkit.exceptions import ActorDiedError
from trainkit.exceptions import InvalidTransitionError
from trainkit.exceptions import TaskError
from trainkit.exceptions import TrainkitInternalError
from trainkit.train import FailureConfig
from trainkit.train import RunConfig
from trainkit.train import ScalingConfig
from trainkit.train._controller import _TRANSITIONS
from trainkit.train._controller import ControllerState
from trainkit.train._controller import TrainController
from trainkit.train._controller import describe_errors
from trainkit.train._failure_policy import FailureDecision
from trainkit.train._failure_policy import FailurePolicy


@pytest.mark.parametrize("limit", [0, 1, 3])
def test_failure_budget_is_exact(limit: int) -> None:
    policy = FailurePolicy(FailureConfig(max_failures=limit))
    decisions = [policy.decide(n)[0] for n in range(1, limit + 2)]
    assert decisions == [FailureDecision.RESTART] * limit + [FailureDecision.RAISE]


def test_no_limit() -> None:
    policy = FailurePolicy(FailureConfig(max_failures=-1))
    assert policy.decide(1000)[0] is FailureDecision.RESTART


def test_terminal_states_have_no_exit() -> None:
    for state, targets in _TRANSITIONS.items():
        assert state.is_terminal == (not targets)
    assert ControllerState.RUNNING in _TRANSITIONS[ControllerState.INITIALIZING]
    assert ControllerState.FINISHED not in _TRANSITIONS[ControllerState.RESTARTING]


def test_errors_are_grouped_by_rank() -> None:
    boom = TaskError("run", "Traceback ...\nRuntimeError: boom", RuntimeError("boom"), 12)
    closed = TaskError("run", "tb", RuntimeError("Connection closed by peer"), 13)
    text = describe_errors("a training worker failed", {
        1: boom, 0: closed, 2: closed, 3: ActorDiedError("ab12", "killed by SIGKILL")})
    assert "rank 1: RuntimeError: boom" in text
    assert "ranks 0, 2: RuntimeError: Connection closed by peer" in text
    assert "rank 3: ActorDiedError" in text and "SIGKILL" in text
    assert "Traceback ...\nRuntimeError: boom" in text  # the first error's traceback


def test_an_illegal_move_names_the_controller_its_state_and_the_move() -> None:
    controller = TrainController(
        fn_blob=b"", config=None, scaling=ScalingConfig(num_workers=2), run_config=RunConfig(),
        backend="gloo", recorder=cast(Any, None), name="exp", start_checkpoint=None,
        shards=[{}, {}])
    controller._transition(ControllerState.RUNNING, "group up")

    with pytest.raises(InvalidTransitionError) as info:
        controller._transition(ControllerState.INITIALIZING, "a second start")

    err = info.value
    assert isinstance(err, TrainkitInternalError)
    assert (err.machine, err.entity, err.state) == ("TrainController", "run exp", "RUNNING")
    assert err.event == "move to INITIALIZING (a second start)"
    assert err.history == ("INITIALIZING -> RUNNING (group up)",)
    assert controller.state is ControllerState.RUNNING  # the refused move changed nothing
