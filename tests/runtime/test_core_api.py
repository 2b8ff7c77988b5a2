"""Ray Core parity of the builtin runtime: the second round's API and its bad input.

The same features on both backends are in test_backends.py; this file holds what only the
builtin runtime can show (its messages, its validation) and the pure arity check.
"""

from __future__ import annotations

import pytest

import trainkit as tk
from trainkit.exceptions import ActorDiedError
from trainkit.runtime import NodeAffinitySchedulingStrategy
from trainkit.runtime import PlacementGroupSchedulingStrategy
from trainkit.runtime import get_current_placement_group
from trainkit.runtime import placement_group
from trainkit.runtime import placement_group_table
from trainkit.runtime._arity import arity_of


def test_arity_fast_path_and_messages():
    def f(a, b=1, *, c):
        pass

    arity = arity_of(f)
    assert arity is not None
    arity.check("f", (1,), {"c": 2})
    with pytest.raises(TypeError, match=r"f\.remote\(\).*missing.*'c'"):
        arity.check("f", (1,), {})
    with pytest.raises(TypeError, match="too many positional"):
        arity.check("f", (1, 2, 3), {"c": 1})

    class A:
        def m(self, x):
            pass

    bound = arity_of(A.m, bound=True)
    assert bound is not None
    bound.check("A.m", (1,), {})
    with pytest.raises(TypeError, match=r"A\.m\.remote\(\)"):
        bound.check("A.m", (), {})


@pytest.mark.parametrize("options, match", [
    ({"num_returns": -1}, "num_returns=-1"),
    ({"num_returns": "dynamic"}, "num_returns='dynamic'"),
])
def test_bad_task_options(options, match):
    def f():
        pass

    with pytest.raises(ValueError, match=match):
        tk.remote(**options)(f)


@pytest.mark.parametrize("options, match", [
    ({"lifetime": "forever"}, "lifetime='forever'"),
    ({"lifetime": "detached"}, "needs a name"),
    ({"get_if_exists": True}, "needs a name"),
])
def test_bad_actor_options(options, match):
    class A:
        pass

    with pytest.raises(ValueError, match=match):
        tk.remote(**options)(A)


def test_exit_actor_outside_an_actor_says_what_to_use(rt):
    with pytest.raises(RuntimeError, match=r"tk\.kill"):
        tk.exit_actor()


def test_wrong_arity_fails_at_remote_naming_the_function(rt):
    @tk.remote
    def f(x):
        return x

    @tk.remote
    class A:
        def __init__(self, n):
            self.n = n

        def m(self, x):
            return x

    with pytest.raises(TypeError, match=r"f\.remote\(\)"):
        f.remote(1, 2)
    with pytest.raises(TypeError, match=r"A\.remote\(\)"):
        A.remote()
    a = A.remote(1)
    with pytest.raises(TypeError, match=r"A\.m\.remote\(\)"):
        a.m.remote()
    assert tk.get(a.m.remote(3)) == 3


def test_num_returns_mismatch_is_the_calls_error(rt):
    @tk.remote(num_returns=2)
    def three():
        return 1, 2, 3

    a, b = three.remote()
    with pytest.raises(ValueError, match="num_returns=2"):
        tk.get(a, timeout=60)
    with pytest.raises(ValueError, match="num_returns=2"):
        tk.get(b, timeout=60)


def test_exit_actor_is_final_even_with_restarts(rt):
    @tk.remote(max_restarts=3)
    class A:
        def bye(self):
            tk.exit_actor()

        def ping(self):
            return "pong"

    a = A.remote()
    assert tk.get(a.ping.remote()) == "pong"
    with pytest.raises(ActorDiedError, match="exit_actor"):
        tk.get(a.bye.remote(), timeout=60)
    with pytest.raises(ActorDiedError, match="exit_actor"):
        tk.get(a.ping.remote(), timeout=60)


def test_class_attributes_static_and_class_methods_inside_methods(rt):
    @tk.remote
    class A:
        LIMIT = 7

        @staticmethod
        def double(x):
            return 2 * x

        @classmethod
        def label(cls):
            return cls.__name__

        def use(self):
            return A.LIMIT, A.double(3), A.label()

    assert tk.get(A.remote().use.remote()) == (7, 6, "A")
    assert A.LIMIT == 7 and A.double(2) == 4


def test_node_affinity_and_placement_group_context(rt):
    node_id = tk.nodes()[0]["NodeID"]

    @tk.remote
    def where():
        ctx = tk.get_runtime_context()
        pg = get_current_placement_group()
        return ctx.get_node_id(), ctx.get_task_id(), pg.id if pg is not None else None

    strategy = NodeAffinitySchedulingStrategy(node_id)
    got_node, task_id, pg_id = tk.get(where.options(scheduling_strategy=strategy).remote(),
                                      timeout=60)
    assert got_node == node_id and task_id and pg_id is None
    with pytest.raises(ValueError, match="names no live node"):
        where.options(scheduling_strategy=NodeAffinitySchedulingStrategy("ff" * 8)).remote()
    soft = NodeAffinitySchedulingStrategy("ff" * 8, soft=True)
    assert tk.get(where.options(scheduling_strategy=soft).remote(), timeout=60)[0] == node_id

    pg = placement_group([{"CPU": 1}], name="g")
    assert pg.wait(30)
    row = placement_group_table(pg)
    assert row["state"] == "CREATED" and row["name"] == "g"
    in_pg = where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0))
    assert tk.get(in_pg.remote(), timeout=60)[2] == pg.id
    tk.util.remove_placement_group(pg)
    assert placement_group_table()[pg.id]["state"] == "REMOVED"


def test_detached_named_actor_and_get_if_exists(rt):
    @tk.remote
    class Svc:
        def ping(self):
            return tk.get_runtime_context().get_actor_id()

    first = Svc.options(name="svc", lifetime="detached").remote()
    again = Svc.options(name="svc", get_if_exists=True).remote()
    assert tk.get(first.ping.remote()) == tk.get(again.ping.remote())
    assert tk.util.list_named_actors() == ["svc"]
    assert tk.util.list_named_actors(all_namespaces=True) == [
        {"name": "svc", "namespace": "default"}]
    tk.kill(first)
    with pytest.raises(ActorDiedError):
        tk.get(again.ping.remote(), timeout=60)


def test_rays_init_keywords_are_accepted(runtime, capfd):
    runtime(configure_logging=False, logging_level="INFO", include_dashboard=False)
    assert tk.get(tk.put(1)) == 1
    assert capfd.readouterr().err == ""


def test_unknown_init_keyword_is_a_type_error_with_a_hint():
    with pytest.raises(TypeError, match=r"num_cpu.*Did you mean 'num_cpus'"):
        tk.init(num_cpu=2)


def test_a_refused_head_address_fails_at_once():
    with pytest.raises(ConnectionError, match="connection refused"):
        tk.init("127.0.0.1:1")
