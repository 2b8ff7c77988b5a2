"""The data workloads: data_images, data_parquet, data_pipeline.

After the anchor ../shared/anchors/ray/data_throughput.py. The same code drives trainkit.data
and ray.data through _data_api: from_numpy, read_parquet, Dataset.map_batches,
iter_batches, iter_torch_batches, all with the backend's defaults except the sizes named.
Every pass builds a fresh pipeline (map_batches on the source dataset) and consumes it fully.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from .common import MB
from .common import Budget
from .common import import_backend
from .common import med
from .common import pc
from .registry import workload

DATA_IMG_ROWS = 100_000  # 32x32x3 uint8: 293 MiB
DATA_PQ_ROWS = 2_500_000  # x 10 float64 columns, snappy, row groups of 262,144: ~217 MB
DATA_PQ_COLS = 10
DATA_PQ_BATCHES = (256, 65_536)  # Ray's default iter_batches size, and pyarrow's
DATA_PIPE_ROWS = 256_000  # x 32 float32: 1,000 batches of 256
DATA_PIPE_BATCH = 256
DATA_PIPE_BLOCKS = 40  # from_numpy of a list: one block per array on both (25 batches each)
DATA_PIPE_WORK_MS = 2.0  # per batch, in map_batches and in the consumer


def _data_api(backend):
    """The backend's data module (trainkit.data / ray.data); Ray's progress bars off, as in
    the anchor."""
    if backend == "ray":
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        return ray.data
    from trainkit import data

    return data


def _img_normalize(batch):
    import numpy as np

    x = batch["data"].astype(np.float32)
    x *= 1.0 / 255.0
    return {"data": x}


def _data_session(args, line, body):
    rt = import_backend(args.backend)
    api = _data_api(args.backend)
    t0 = pc()
    rt.init(num_cpus=2)
    line["init_s"] = round(pc() - t0, 3)
    try:
        body(api)
    finally:
        t = pc()
        rt.shutdown()
        line["shutdown_s"] = round(pc() - t, 3)


# trainkit took ~20 s per images pass on 2026-11-26; the passes stop after their budgets
@workload(
    "data_images",
    about="from_numpy of 100k 32x32x3 uint8 images, map_batches (to float32) and "
    "iter_torch_batches(256): rows/s, time to first batch; numpy floor",
    deadline_s=150.0,
)
def wl_data_images(args, line):
    """100k 32x32x3 uint8 images: from_numpy, map_batches(normalize to float32, 1024),
    iter_torch_batches(256) consumed fully. A warm-up pass, then up to 3 timed passes (fewer
    once 45 s are spent); each pass is a fresh pipeline, and its time to first batch is taken
    from the iter_torch_batches() call to the first batch. The single-process numpy floor
    (normalize + torch.from_numpy, no framework) is measured before init()."""
    import numpy as np
    import torch

    arr = np.random.default_rng(0).integers(0, 256, size=(DATA_IMG_ROWS, 32, 32, 3), dtype=np.uint8)
    line["rows"] = DATA_IMG_ROWS
    line["in_MB"] = round(arr.nbytes / MB, 1)

    floor = []
    for _ in range(3):
        t = pc()
        n = 0
        for i in range(0, DATA_IMG_ROWS, 1024):
            y = _img_normalize({"data": arr[i : i + 1024]})["data"]
            for j in range(0, len(y), 256):
                n += torch.from_numpy(y[j : j + 256]).shape[0]
        floor.append(pc() - t)
        assert n == DATA_IMG_ROWS, n
    line["numpy_rows_s"] = round(DATA_IMG_ROWS / med(floor), 0)

    def one_pass(ds):
        t = pc()
        pipe = ds.map_batches(_img_normalize, batch_size=1024, batch_format="numpy")
        t_iter = pc()
        it = pipe.iter_torch_batches(batch_size=256)
        n, ttfb = 0, None
        for b in it:
            if ttfb is None:
                ttfb = pc() - t_iter
            n += b["data"].shape[0]
        wall = pc() - t
        if n != DATA_IMG_ROWS:
            raise RuntimeError(f"a pass yielded {n} rows, expected {DATA_IMG_ROWS}")
        if b["data"].dtype != torch.float32:
            raise RuntimeError(f"batches are {b['data'].dtype}, expected torch.float32")
        return wall, ttfb

    def body(api):
        t = pc()
        ds = api.from_numpy(arr)
        line["create_s"] = round(pc() - t, 3)
        wall, ttfb = one_pass(ds)
        line["first_pass_s"] = round(wall, 3)
        line["first_batch_cold_s"] = round(ttfb, 4)
        walls, ttfbs = [], []
        budget = Budget(45.0, min_reps=1, max_reps=3)
        while budget.more():
            wall, ttfb = one_pass(ds)
            walls.append(wall)
            ttfbs.append(ttfb)
            budget.tick()
            line["pass_s"] = round(med(walls), 3)
            line["rows_s"] = round(DATA_IMG_ROWS / med(walls), 0)
            line["first_batch_s"] = round(med(ttfbs), 4)
        line["pass_s_all"] = [round(w, 3) for w in walls]
        line["first_batch_s_all"] = [round(x, 4) for x in ttfbs]
        line["in_MBps"] = round(arr.nbytes / MB / med(walls), 1)
        line["vs_numpy_floor"] = round(line["rows_s"] / line["numpy_rows_s"], 3)

    _data_session(args, line, body)


@workload(
    "data_parquet",
    about="read_parquet(217 MB).iter_batches(B) for B = 256 and 65,536: rows/s; pyarrow floor",
    deadline_s=150.0,
)
def wl_data_parquet(args, line):
    """A ~217 MB parquet file (2.5M rows x 10 float64, as the anchor), written once to a temp
    dir (so it is in the page cache), then read_parquet(path).iter_batches(batch_size=B),
    consumed fully, for B = 256 (Ray's default) and 65,536 (pyarrow's): a warm-up pass, then
    up to 3 timed passes each. The floor is pyarrow.parquet.ParquetFile(path).iter_batches()
    in process; bs<B>_vs_pyarrow is each rows/s over the floor's."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tempfile.mkdtemp(prefix="tkbench_pq_")
    try:
        path = os.path.join(d, "data.parquet")
        rng = np.random.default_rng(0)
        t = pc()
        cols = {f"c{i}": rng.random(DATA_PQ_ROWS) for i in range(DATA_PQ_COLS)}
        pq.write_table(pa.table(cols), path, row_group_size=262_144, compression="snappy")
        del cols
        line["gen_s"] = round(pc() - t, 2)
        line["file_MB"] = round(os.path.getsize(path) / MB, 1)
        line["rows"] = DATA_PQ_ROWS

        def timed(key, fn, budget_s):
            fn()  # warm-up
            times = []
            budget = Budget(budget_s, min_reps=1, max_reps=3)
            while budget.more():
                t = pc()
                n = fn()
                times.append(pc() - t)
                budget.tick()
                if n != DATA_PQ_ROWS:
                    raise RuntimeError(f"{key}: {n} rows, expected {DATA_PQ_ROWS}")
                line[f"{key}_rows_s"] = round(DATA_PQ_ROWS / med(times), 0)
            line[f"{key}_s_all"] = [round(x, 3) for x in times]
            line[f"{key}_MBps"] = round(line["file_MB"] / med(times), 1)

        def run_pyarrow():
            n = 0
            for b in pq.ParquetFile(path).iter_batches():
                n += b.num_rows
            return n

        timed("pyarrow", run_pyarrow, 10.0)

        def body(api):
            for bs in DATA_PQ_BATCHES:

                def run(bs=bs):
                    n = 0
                    for b in api.read_parquet(path).iter_batches(batch_size=bs):
                        n += len(b["c0"])
                    return n

                timed(f"bs{bs}", run, 25.0)
                # against the floor measured in this run (issue 16: bs256 >= 25 %)
                line[f"bs{bs}_vs_pyarrow"] = round(
                    line[f"bs{bs}_rows_s"] / line["pyarrow_rows_s"], 3)

        _data_session(args, line, body)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _pipe_work(k):
    """k rounds of numpy work on a 4k-float buffer (numpy releases the GIL inside)."""
    import numpy as np

    x = np.linspace(0.0, 1.0, 4096)
    for _ in range(k):
        x = np.sqrt(x * x + 1.0)
    return float(x[0])


def _pipe_map(batch, k):
    _pipe_work(k)
    return batch


def _calibrate_work(target_ms):
    """Rounds of _pipe_work that take target_ms in this process (the fastest of 7 after a
    warm-up: the least disturbed by other load), and the ms (median of 7) at that count."""
    k = 10
    _pipe_work(k)
    while True:
        ts = []
        for _ in range(5):
            t = pc()
            _pipe_work(k)
            ts.append(pc() - t)
        if min(ts) >= 0.2e-3 or k > 1_000_000:
            break
        k *= 4
    ts = []
    for _ in range(7):
        t = pc()
        _pipe_work(k)
        ts.append(pc() - t)
    k = max(1, round(k * target_ms * 1e-3 / min(ts)))
    ts = []
    for _ in range(7):
        t = pc()
        _pipe_work(k)
        ts.append(pc() - t)
    return k, med(ts) * 1e3


@workload(
    "data_pipeline",
    about="~2 ms/batch map_batches feeding a ~2 ms/batch consumer: the consumer's share of "
    "time waiting in next()",
    deadline_s=120.0,
)
def wl_data_pipeline(args, line):
    """map_batches(batch_size=256) doing ~2 ms of numpy work per batch, feeding a consumer
    (the driver) that does ~2 ms of the same work per batch of iter_batches(batch_size=256).
    256,000 rows x 32 float32 (1,000 batches) in 40 blocks, given to from_numpy as a list of
    40 arrays: one block per array on both backends (from_numpy of one array is one block on
    Ray, which would leave one task for the whole pass). The work is a fixed count of numpy
    rounds, calibrated to 2 ms in the driver before init(). Reported: the share of the consumer's
    wall time spent inside next() (waiting for data), over a full pass (a warm-up pass, then
    the median of up to 3), and the same from the second batch on."""
    import numpy as np

    k, work_ms = _calibrate_work(DATA_PIPE_WORK_MS)
    line["work_rounds"] = k
    line["work_ms"] = round(work_ms, 3)
    arr = np.random.default_rng(0).random((DATA_PIPE_ROWS, 32), dtype=np.float32)
    n_batches = -(-DATA_PIPE_ROWS // DATA_PIPE_BATCH)
    line["batches"] = n_batches
    # both sides busy for n_batches x work: on 2 CPUs the producer has 1 CPU's worth left
    line["consumer_work_s"] = round(n_batches * work_ms * 1e-3, 3)

    def one_pass(ds):
        pipe = ds.map_batches(
            _pipe_map, batch_size=DATA_PIPE_BATCH, batch_format="numpy", fn_kwargs={"k": k}
        )
        t0 = pc()
        it = iter(pipe.iter_batches(batch_size=DATA_PIPE_BATCH))
        waits, n = [], 0
        while True:
            t = pc()
            try:
                b = next(it)
            except StopIteration:
                waits.append(pc() - t)
                break
            waits.append(pc() - t)
            n += len(b["data"])
            _pipe_work(k)
        total = pc() - t0
        if n != DATA_PIPE_ROWS:
            raise RuntimeError(f"a pass yielded {n} rows, expected {DATA_PIPE_ROWS}")
        return total, sum(waits), waits[0]

    def body(api):
        rows = DATA_PIPE_ROWS // DATA_PIPE_BLOCKS
        ds = api.from_numpy([arr[i : i + rows] for i in range(0, DATA_PIPE_ROWS, rows)])
        total, wait, _ = one_pass(ds)
        line["first_pass_s"] = round(total, 3)
        line["first_pass_wait_share"] = round(wait / total, 4)
        res = []
        budget = Budget(40.0, min_reps=1, max_reps=3)
        while budget.more():
            res.append(one_pass(ds))
            budget.tick()
            line["wall_s_pass"] = round(med(r[0] for r in res), 3)
            line["wait_s"] = round(med(r[1] for r in res), 3)
            line["wait_share"] = round(med(r[1] / r[0] for r in res), 4)
            line["wait_share_after_first"] = round(
                med((r[1] - r[2]) / (r[0] - r[2]) for r in res), 4
            )
            line["first_batch_s"] = round(med(r[2] for r in res), 4)
        line["wait_share_all"] = [round(r[1] / r[0], 4) for r in res]
        line["rows_s"] = round(DATA_PIPE_ROWS / line["wall_s_pass"], 0)

    _data_session(args, line, body)
