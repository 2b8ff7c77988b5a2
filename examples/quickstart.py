"""Quick start: remote functions, an actor, the object store and wait, on trainkit's runtime."""

import numpy as np

import trainkit as tk


@tk.remote
def square(x):
    return x * x


@tk.remote
def total(array):  # an ObjectRef argument arrives as its value
    return float(array.sum())


@tk.remote
class Counter:
    def __init__(self):
        self.count = 0

    def add(self, n):
        self.count += n
        return self.count


if __name__ == "__main__":
    tk.init()  # starts a single-node runtime owned by this script
    print("squares:", tk.get([square.remote(i) for i in range(5)]))

    counter = Counter.remote()
    calls = [counter.add.remote(n) for n in (1, 2, 3)]  # run in order on one actor
    print("counter:", tk.get(calls))

    array_ref = tk.put(np.ones(1_000_000))  # 8 MB, stored once, shared by reference
    print("sum:", tk.get(total.remote(array_ref)))

    ready, not_ready = tk.wait([square.remote(i) for i in range(4)], num_returns=2, timeout=10)
    print("wait:", len(ready), "ready,", len(not_ready), "left")
    tk.shutdown()
