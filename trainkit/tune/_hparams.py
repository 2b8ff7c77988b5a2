"""TensorBoard HParams for trials: each trial's folder gets a session-start summary with its
flattened config and a session-end one with its status, so TensorBoard's HParams tab compares
the trials of a sweep (while it runs, too). Written in the trial's process; the protobuf
modules are preloaded in the runtime's forkserver with the trial actor."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from trainkit._result_log import ResultLog
from trainkit._result_log import flatten_metrics


def _summary(tag: str, plugin_data: Any) -> bytes:
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import metadata

    value = summary_pb2.Summary.Value(tag=tag,
                                      metadata=metadata.create_summary_metadata(plugin_data))
    data: bytes = summary_pb2.Summary(value=[value]).SerializeToString()
    return data


def write_session_start(log: ResultLog, trial_name: str, config: Mapping[str, Any]) -> None:
    try:
        from tensorboard.plugins.hparams import metadata
        from tensorboard.plugins.hparams import plugin_data_pb2
    except ImportError:  # tensorboard missing or broken: the scalars still work
        return
    info = plugin_data_pb2.SessionStartInfo(group_name=trial_name, start_time_secs=time.time())
    for key, value in flatten_metrics(config).items():
        if isinstance(value, bool):
            info.hparams[key].bool_value = value
        elif isinstance(value, (int, float)):
            info.hparams[key].number_value = float(value)
        elif value is not None:
            info.hparams[key].string_value = str(value)
    data = plugin_data_pb2.HParamsPluginData(session_start_info=info,
                                             version=metadata.PLUGIN_DATA_VERSION)
    log.append_summary(_summary(metadata.SESSION_START_INFO_TAG, data), step=0)


def write_session_end(log: ResultLog, ok: bool) -> None:
    try:
        from tensorboard.plugins.hparams import api_pb2
        from tensorboard.plugins.hparams import metadata
        from tensorboard.plugins.hparams import plugin_data_pb2
    except ImportError:
        return
    status = api_pb2.STATUS_SUCCESS if ok else api_pb2.STATUS_FAILURE
    info = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
    data = plugin_data_pb2.HParamsPluginData(session_end_info=info,
                                             version=metadata.PLUGIN_DATA_VERSION)
    log.append_summary(_summary(metadata.SESSION_END_INFO_TAG, data), step=0)
