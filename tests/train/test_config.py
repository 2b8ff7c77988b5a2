"""Configs fail when constructed, naming the field, the value and the rule."""

from __future__ import annotations

import pytest

from trainkit.train import CheckpointConfig
from trainkit.train import FailureConfig
from trainkit.train import RunConfig
from trainkit.train import ScalingConfig


@pytest.mark.parametrize(("make", "words"), [
    (lambda: ScalingConfig(num_workers=-1), ["num_workers", "-1", ">= 0"]),
    (lambda: ScalingConfig(num_workers=1.5), ["num_workers", "1.5", "int"]),
    (lambda: ScalingConfig(placement_strategy="TIGHT"), ["placement_strategy", "TIGHT", "PACK"]),
    (lambda: ScalingConfig(resources_per_worker={"CPU": -1}), ["CPU", "-1", ">= 0"]),
    (lambda: ScalingConfig(use_gpu=True, resources_per_worker={"GPU": 0}), ["use_gpu", "GPU"]),
    (lambda: FailureConfig(max_failures=-2), ["max_failures", "-2", ">= -1"]),
    (lambda: FailureConfig(rendezvous_timeout_s=0), ["rendezvous_timeout_s", "0"]),
    (lambda: FailureConfig(report_timeout_s=-5), ["report_timeout_s", "-5"]),
    (lambda: CheckpointConfig(num_to_keep=0), ["num_to_keep", "0", ">= 1"]),
    (lambda: CheckpointConfig(checkpoint_score_order="best"), ["checkpoint_score_order",
                                                               "best", "'min'"]),
    (lambda: RunConfig(name="a/b"), ["name", "a/b"]),
    (lambda: RunConfig(verbose=5), ["verbose", "5"]),
    (lambda: RunConfig(failure_config={"max_failures": 1}), ["failure_config", "FailureConfig"]),
])
def test_bad_values_name_field_value_and_rule(make, words) -> None:
    with pytest.raises((ValueError, TypeError)) as info:
        make()
    for word in words:
        assert word in str(info.value)


def test_configs_are_frozen_and_keyword_only() -> None:
    config = ScalingConfig(num_workers=2)
    with pytest.raises(AttributeError):
        config.num_workers = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        ScalingConfig(2)  # type: ignore[misc]


def test_worker_resources() -> None:
    assert ScalingConfig().worker_resources == {"CPU": 1.0}
    assert ScalingConfig(use_gpu=True).worker_resources == {"CPU": 1.0, "GPU": 1.0}
    gpu = ScalingConfig(resources_per_worker={"CPU": 4, "GPU": 0.5, "accel": 1})
    assert gpu.worker_resources == {"CPU": 4.0, "GPU": 0.5, "accel": 1.0}
    assert gpu.uses_gpu


def test_storage_path_default(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("TRAINKIT_STORAGE_PATH", str(tmp_path))
    assert RunConfig().resolved_storage_path == str(tmp_path)
    assert RunConfig(storage_path="~/x").resolved_storage_path.endswith("/x")
