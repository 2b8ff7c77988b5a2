"""The train workloads: train_startup, train_report.

The training loops run inside the backends' worker processes. They are written once and get
the backend's Train functions through _train_api(), so both backends run identical code.
Timestamps cross process boundaries through files in config["ts_dir"] (time.time()), as in
../shared/anchors/ray/train_startup.py.

They use the Train API the two share (trainkit.train / ray.train: report, Checkpoint,
get_context, torch.prepare_model, torch.prepare_data_loader; Trainer is Ray's TorchTrainer).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

from .common import import_backend
from .common import med
from .common import pc
from .common import pct
from .registry import workload

TRAIN_WORKERS = 2
# train_report: timed report() calls per phase (after one warm-up call): at least REPORT_MIN,
# at most REPORT_MAX, fewer once REPORT_BUDGET_S of the phase is spent. Ray's back-to-back
# report() takes ~2 s (see bench/README.md), so Ray gets about 10 calls per phase.
REPORT_MIN = 5
REPORT_MAX = 20
REPORT_BUDGET_S = 20.0
REPORT_MB = 10
REPORT_PAYLOAD = "payload.bin"


def _train_api(backend):
    """The worker-side Train functions of a backend: report, Checkpoint, get_context,
    prepare_model, prepare_data_loader (the same names on both)."""
    from types import SimpleNamespace

    if backend == "ray":
        import ray.train as train
        import ray.train.torch as ttorch
    else:
        import trainkit.train.torch as ttorch
        from trainkit import train
    return SimpleNamespace(
        report=train.report,
        Checkpoint=train.Checkpoint,
        get_context=train.get_context,
        prepare_model=ttorch.prepare_model,
        prepare_data_loader=ttorch.prepare_data_loader,
    )


def _trainer_api(backend):
    """The driver-side classes: (Trainer, ScalingConfig, RunConfig). Ray's Trainer is
    TorchTrainer (DDP over gloo); trainkit's Trainer takes the same arguments."""
    if backend == "ray":
        from ray.train import RunConfig
        from ray.train import ScalingConfig
        from ray.train.torch import TorchTrainer

        return TorchTrainer, ScalingConfig, RunConfig
    try:
        import trainkit.train.torch  # noqa: F401  (the workers need it too)
        from trainkit.train import RunConfig
        from trainkit.train import ScalingConfig
        from trainkit.train import Trainer
    except ImportError as e:
        raise RuntimeError(
            f"trainkit.train does not provide the Train API yet "
            f"(Trainer, ScalingConfig, RunConfig, trainkit.train.torch): {e}"
        ) from e
    return Trainer, ScalingConfig, RunConfig


def _ts_write(config, kind, rank, value):
    path = os.path.join(config["ts_dir"], f"{kind}_rank{rank}")
    with open(path + ".tmp", "w") as f:
        f.write(value if isinstance(value, str) else repr(value))
    os.replace(path + ".tmp", path)


def _startup_loop(config):
    """The anchor's loop: MLP 32-64-1, 1,024 random samples, batch 64, 2 epochs, DDP; each
    epoch is reported, with a checkpoint (torch.save of the state_dict) from rank 0 only."""
    t_first = time.time()  # first line of the training loop
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torch.utils.data import TensorDataset

    api = _train_api(config["backend"])
    rank = api.get_context().get_world_rank()
    _ts_write(config, "start", rank, t_first)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 32, generator=g)
    y = torch.randn(1024, 1, generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    loader = api.prepare_data_loader(loader)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))
    model = api.prepare_model(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.MSELoss()

    for epoch in range(2):
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        total = 0.0
        for xb, yb in loader:
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.detach().item()
        metrics = {"epoch": epoch, "loss": total}
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                sd = model.module.state_dict() if hasattr(model, "module") else model.state_dict()
                torch.save(sd, os.path.join(d, "model.pt"))
                api.report(metrics, checkpoint=api.Checkpoint.from_directory(d))
        else:
            api.report(metrics)

    _ts_write(config, "end", rank, time.time())


def _report_go(config, rank, phase, i, ok=None):
    """Whether report call i of `phase` happens. report() is a barrier on both backends, so
    all ranks must make the same number of calls: rank 0 decides (ok) and writes the decision
    for call i before it enters call i-1; the other ranks read it after call i-1 returns, when
    it is already there (they poll only if report() is not a barrier)."""
    path = os.path.join(config["ts_dir"], f"go_{phase}_{i}")
    if rank == 0:
        with open(path + ".tmp", "w") as f:
            f.write("1" if ok else "0")
        os.replace(path + ".tmp", path)
        return ok
    deadline = time.time() + 120.0
    while not os.path.exists(path):
        if time.time() > deadline:
            raise RuntimeError(f"rank {rank}: no decision from rank 0 for {phase} call {i}")
        time.sleep(0.0005)
    with open(path) as f:
        return f.read() == "1"


def _report_loop(config):
    """report() overhead. Phase "ckpt": rank 0 reports with a 10 MB checkpoint, the other
    ranks metrics only; phase "metrics": metrics only on all ranks. Call 0 of each phase is a
    warm-up; then at least report_min and at most report_max timed calls, fewer if the phase's
    time budget is spent. Each rank times its own calls and writes them to a file."""
    t_first = time.time()
    import json as _json
    import shutil as _shutil

    api = _train_api(config["backend"])
    rank = api.get_context().get_world_rank()
    _ts_write(config, "start", rank, t_first)
    ckpt_dir = payload = blob = None
    rewritten = 0
    if rank == 0:
        ckpt_dir = tempfile.mkdtemp(prefix="tkbench_ckpt_")
        payload = os.path.join(ckpt_dir, config["payload_name"])
        blob = os.urandom(config["payload_mb"] * 2**20)
        with open(payload, "wb") as f:
            f.write(blob)
    out = {"payload_rewritten": 0}
    try:
        for phase in ("ckpt", "metrics"):
            times = []  # times[0] is the warm-up call
            t_phase = time.perf_counter()
            i, go = 0, True
            while go:
                ok = None
                if rank == 0:  # may call i+1 happen? decided before call i
                    k = i + 1
                    el = time.perf_counter() - t_phase
                    per = el / i if i else 0.0
                    ok = k <= config["report_max"] and (
                        k <= config["report_min"] or el + 2 * per <= config["report_budget_s"]
                    )
                    go_next = _report_go(config, rank, phase, k, ok)
                ckpt = None
                if rank == 0 and phase == "ckpt":
                    if not os.path.exists(payload):  # the backend moved or deleted it
                        os.makedirs(ckpt_dir, exist_ok=True)
                        with open(payload, "wb") as f:
                            f.write(blob)
                        rewritten += 1
                    ckpt = api.Checkpoint.from_directory(ckpt_dir)
                metrics = {"phase": phase, "i": i}
                if ckpt is not None:
                    t = time.perf_counter()
                    api.report(metrics, checkpoint=ckpt)
                else:
                    t = time.perf_counter()
                    api.report(metrics)
                times.append(time.perf_counter() - t)
                if rank != 0:
                    go_next = _report_go(config, rank, phase, i + 1)
                go = go_next
                i += 1
            out[phase] = times
    finally:
        if ckpt_dir:
            _shutil.rmtree(ckpt_dir, ignore_errors=True)
    out["payload_rewritten"] = rewritten
    _ts_write(config, "times", rank, _json.dumps(out))
    _ts_write(config, "end", rank, time.time())


def _read_ts(ts_dir, kind):
    out = {}
    for fn in os.listdir(ts_dir):
        if fn.startswith(kind + "_rank") and not fn.endswith(".tmp"):
            with open(os.path.join(ts_dir, fn)) as f:
                out[int(fn[len(kind) + 5 :])] = f.read()
    return out


def _count_checkpoints(exp_dir, marker):
    """Checkpoint directories persisted under the run's directory: the directories that hold
    the file the loop saved (`marker`). Backend-neutral: no assumption on directory names."""
    n = 0
    for _root, _dirs, files in os.walk(exp_dir):
        n += marker in files
    return n


def _fit_once(backend, loop, storage, name, extra_config, marker):
    """One Trainer(...) + fit(); driver times around construction and fit, worker times from
    the files. Raises if the fit failed."""
    Trainer, ScalingConfig, RunConfig = _trainer_api(backend)
    ts_dir = tempfile.mkdtemp(prefix="tkbench_ts_")
    try:
        config = {"ts_dir": ts_dir, "backend": backend, **extra_config}
        t_construct = time.time()
        trainer = Trainer(
            loop,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=TRAIN_WORKERS, use_gpu=False),
            run_config=RunConfig(name=name, storage_path=storage),
        )
        t_fit = time.time()
        result = trainer.fit()
        t_done = time.time()
        if getattr(result, "error", None) is not None:
            raise RuntimeError(f"fit {name} returned an error: {result.error!r}")
        starts = [float(v) for v in _read_ts(ts_dir, "start").values()]
        ends = [float(v) for v in _read_ts(ts_dir, "end").values()]
        if len(starts) != TRAIN_WORKERS or len(ends) != TRAIN_WORKERS:
            raise RuntimeError(
                f"fit {name}: {len(starts)} loop start(s) and {len(ends)} loop end(s) "
                f"recorded, expected {TRAIN_WORKERS} each"
            )
        res = {
            "fit_s": t_done - t_construct,
            "construct_s": t_fit - t_construct,
            "first_line_s": min(starts) - t_fit,
            "loop_s": max(ends) - min(starts),
            "teardown_s": t_done - max(ends),
            "checkpoints": _count_checkpoints(os.path.join(storage, name), marker),
            "has_checkpoint": getattr(result, "checkpoint", None) is not None,
            "times": {r: json.loads(v) for r, v in _read_ts(ts_dir, "times").items()},
        }
        return res
    finally:
        shutil.rmtree(ts_dir, ignore_errors=True)


TRAIN_KEYS = ("fit_s", "construct_s", "first_line_s", "loop_s", "teardown_s", "checkpoints")


@workload(
    "train_startup",
    about="Trainer/TorchTrainer fit() of a tiny DDP MLP on 2 CPU workers: 3 fits after "
    "init(), the first a warm-up; fit, first-line, loop and teardown times",
    deadline_s=160.0,
)
def wl_train_startup(args, line):
    """In one process: init(num_cpus=2), then 3 fits of the anchor's loop. Fit 1 is a warm-up
    (reported as fit1_*); fits 2 and 3 are "warm", reported as medians. Fit 3 is skipped if it
    would not fit in the deadline."""
    rt = import_backend(args.backend)
    _trainer_api(args.backend)  # fail early and clearly if the Train API is missing
    t0 = pc()
    rt.init(num_cpus=2)
    line["init_s"] = round(pc() - t0, 3)
    storage = tempfile.mkdtemp(prefix="tkbench_train_")
    warm = []

    def rnd(d):
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in d.items()}

    try:
        fits = []
        for i in range(3):
            if i == 2:
                # the third fit only if it fits in the deadline, with 20 s to spare
                left = args.deadline - (pc() - args.t_start)
                if fits[-1]["fit_s"] + 20.0 > left:
                    line["fit3_skipped"] = f"{left:.0f} s left before the deadline"
                    break
            r = _fit_once(args.backend, _startup_loop, storage, f"fit{i + 1}", {}, "model.pt")
            r.pop("times", None)
            fits.append(r)
            if i == 0:
                for k in TRAIN_KEYS:
                    line[f"fit1_{k}"] = round(r[k], 3)
            else:
                warm.append(r)
                line["warm_runs"] = [rnd(w) for w in warm]
                for k in TRAIN_KEYS:
                    line[k] = round(med(w[k] for w in warm), 3)
                line["has_checkpoint"] = all(w["has_checkpoint"] for w in warm)
        line["n_warm"] = len(warm)
    finally:
        t = pc()
        rt.shutdown()
        line["shutdown_s"] = round(pc() - t, 3)
        shutil.rmtree(storage, ignore_errors=True)


@workload(
    "train_report",
    about="the cost of one report() with a 10 MB checkpoint, and metrics-only",
    deadline_s=120.0,
)
def wl_train_report(args, line):
    """One fit on 2 workers whose loop times report(): calls with a 10 MB checkpoint from
    rank 0 (other ranks metrics only), then metrics-only calls on all ranks (_report_loop)."""
    rt = import_backend(args.backend)
    _trainer_api(args.backend)
    t0 = pc()
    rt.init(num_cpus=2)
    line["init_s"] = round(pc() - t0, 3)
    storage = tempfile.mkdtemp(prefix="tkbench_report_")
    try:
        cfg = {
            "report_min": REPORT_MIN,
            "report_max": REPORT_MAX,
            "report_budget_s": REPORT_BUDGET_S,
            "payload_mb": REPORT_MB,
            "payload_name": REPORT_PAYLOAD,
        }
        r = _fit_once(args.backend, _report_loop, storage, "report", cfg, REPORT_PAYLOAD)
        times = {int(k): v for k, v in r.pop("times").items()}
        if 0 not in times:
            raise RuntimeError(f"no report timings from rank 0 (got ranks {sorted(times)})")
        others = [t for rank, t in times.items() if rank != 0]
        for phase, key, nd in (("ckpt", "report_ckpt10mb", 2), ("metrics", "report_metrics", 3)):
            first, timed = times[0][phase][0], times[0][phase][1:]
            line[f"{key}_ms"] = round(med(timed) * 1e3, nd)
            line[f"{key}_p90_ms"] = round(pct(timed, 90) * 1e3, nd)
            line[f"{key}_max_ms"] = round(max(timed) * 1e3, nd)
            line[f"{key}_first_ms"] = round(first * 1e3, nd)  # the phase's warm-up call
            line[f"{key}_n"] = len(timed)
            if others:
                line[f"{key}_other_ranks_ms"] = round(
                    med(x for t in others for x in t[phase][1:]) * 1e3, nd
                )
        line["payload_rewritten"] = times[0]["payload_rewritten"]
        line["report_checkpoints"] = r["checkpoints"]  # persisted copies of the 10 MB file
        for k in ("fit_s", "first_line_s", "loop_s", "teardown_s"):
            line[f"report_fit_{k}"] = round(r[k], 3)
    finally:
        t = pc()
        rt.shutdown()
        line["shutdown_s"] = round(pc() - t, 3)
        shutil.rmtree(storage, ignore_errors=True)
