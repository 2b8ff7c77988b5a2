"""Search-space domains, grid expansion and resolution (pure, seeded, no runtime)."""

from __future__ import annotations

import math
import pickle
import statistics
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from trainkit.tune._search_space import Categorical
from trainkit.tune._search_space import Domain
from trainkit.tune._search_space import Float
from trainkit.tune._search_space import Function
from trainkit.tune._search_space import GridSearch
from trainkit.tune._search_space import Integer
from trainkit.tune._search_space import Normal
from trainkit.tune._search_space import choice
from trainkit.tune._search_space import expand_grid
from trainkit.tune._search_space import flatten_space
from trainkit.tune._search_space import generate_variants
from trainkit.tune._search_space import grid_search
from trainkit.tune._search_space import grid_size
from trainkit.tune._search_space import lograndint
from trainkit.tune._search_space import loguniform
from trainkit.tune._search_space import qlograndint
from trainkit.tune._search_space import qloguniform
from trainkit.tune._search_space import qrandint
from trainkit.tune._search_space import qrandn
from trainkit.tune._search_space import quniform
from trainkit.tune._search_space import randint
from trainkit.tune._search_space import randn
from trainkit.tune._search_space import resolve
from trainkit.tune._search_space import sample_from
from trainkit.tune._search_space import set_path
from trainkit.tune._search_space import uniform

N = 1000


def _draw(domain: Domain, seed: int = 0) -> list[Any]:
    rng = np.random.default_rng(seed)
    return [domain.sample(rng) for _ in range(N)]


def _is_multiple(value: float, q: float) -> bool:
    return math.isclose(value / q, round(value / q), abs_tol=1e-9)


# --- sampling -------------------------------------------------------------------------------


def test_uniform_is_a_float_in_range_with_the_right_mean() -> None:
    values = _draw(uniform(2, 5))
    assert all(type(v) is float and 2 <= v < 5 for v in values)
    assert statistics.fmean(values) == pytest.approx(3.5, abs=0.15)


def test_quniform_hits_every_multiple_of_q_both_ends_included() -> None:
    values = _draw(quniform(0, 1, 0.25))
    assert all(type(v) is float for v in values)
    assert set(values) == {0.0, 0.25, 0.5, 0.75, 1.0}


def test_quniform_values_carry_no_float_noise() -> None:
    values = _draw(quniform(0, 1, 0.1))
    assert all(v == round(v, 1) for v in values)  # 0.3, never 0.30000000000000004
    assert {0.0, 1.0} <= set(values)


def test_loguniform_spreads_evenly_over_the_decades() -> None:
    values = _draw(loguniform(1e-4, 1e-1))
    assert all(type(v) is float and 1e-4 <= v < 1e-1 for v in values)
    decades = Counter(math.floor(math.log10(v)) for v in values)
    assert set(decades) == {-4, -3, -2}
    for count in decades.values():  # about a third each; uniform would put 90% in the last
        assert 270 < count < 400


def test_qloguniform_is_log_spread_and_quantized() -> None:
    values = _draw(qloguniform(1e-4, 1e-1, 1e-4))
    assert all(1e-4 <= v <= 1e-1 and _is_multiple(v, 1e-4) for v in values)
    assert sum(v < 1e-2 for v in values) > N / 2  # log spread: most below the last decade


def test_randn_has_the_mean_and_sd_asked() -> None:
    values = _draw(randn(2.0, 0.5))
    assert all(type(v) is float for v in values)
    assert statistics.fmean(values) == pytest.approx(2.0, abs=0.05)
    assert statistics.stdev(values) == pytest.approx(0.5, abs=0.05)


def test_qrandn_is_quantized() -> None:
    values = _draw(qrandn(0.0, 1.0, 0.5))
    assert all(_is_multiple(v, 0.5) for v in values)
    assert len(set(values)) > 5


def test_randint_excludes_upper() -> None:
    values = _draw(randint(0, 5))
    assert all(type(v) is int for v in values)
    assert set(values) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        (qrandint(1, 4), {1, 2, 3, 4}),
        (qrandint(0, 10, 5), {0, 5, 10}),
        (qrandint(1, 20, 5), {5, 10, 15, 20}),  # multiples of q, as Ray
    ],
)
def test_qrandint_includes_upper(domain: Integer, expected: set[int]) -> None:
    values = _draw(domain)
    assert all(type(v) is int for v in values)
    assert set(values) == expected


def test_lograndint_is_log_spread_and_excludes_upper() -> None:
    values = _draw(lograndint(1, 1000))
    assert all(type(v) is int and 1 <= v <= 999 for v in values)
    assert 270 < sum(v < 10 for v in values) < 400


def test_qlograndint_gives_multiples_of_q_upper_included() -> None:
    values = _draw(qlograndint(1, 100, 5))
    assert all(type(v) is int and 5 <= v <= 100 and v % 5 == 0 for v in values)
    assert set(_draw(qlograndint(1, 10, 5))) == {5, 10}


def test_choice_draws_every_category_and_copies_it() -> None:
    domain = choice(["a", [1, 2], None])
    values = _draw(domain)
    assert Counter(map(repr, values)).keys() == {"'a'", "[1, 2]", "None"}
    drawn = next(v for v in values if isinstance(v, list))
    drawn.append(3)
    assert domain.categories[1] == [1, 2]


@pytest.mark.parametrize(
    "domain",
    [uniform(0, 1), quniform(0, 1, 0.1), loguniform(1e-3, 1), randint(0, 10), qrandint(0, 9, 3),
     lograndint(1, 50), qlograndint(2, 64, 2), randn(), choice([1, "x"])],
    ids=repr,
)
def test_every_sample_is_valid_and_seeded_draws_repeat(domain: Domain) -> None:
    values = _draw(domain, seed=3)
    assert all(domain.is_valid(v) for v in values)
    assert values == _draw(domain, seed=3)
    assert values != _draw(domain, seed=4)


def test_is_valid_rejects_values_outside_the_domain() -> None:
    assert not uniform(0, 1).is_valid(1.5)
    assert not quniform(0, 1, 0.5).is_valid(0.3)
    assert not randint(0, 3).is_valid(3)
    assert qrandint(0, 3).is_valid(3)
    assert not qrandint(0, 10, 5).is_valid(7)
    assert not randint(0, 3).is_valid(1.0)
    assert not choice(["a"]).is_valid("b")


# --- construction: errors and repr ----------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: uniform(5, 3), ValueError, "`lower` is 5, but must be < `upper` (3)"),
        (lambda: uniform(0, math.inf), ValueError, "`upper` is inf, but must be finite"),
        (lambda: uniform("0", 1), TypeError, "`lower` is '0', but must be a number"),
        (lambda: loguniform(0, 1), ValueError, "`lower` is 0, but must be > 0 for a log scale"),
        (lambda: loguniform(1, 10, base=1), ValueError, "`base` is 1, but must be > 0 and != 1"),
        (lambda: quniform(0, 1, 0), ValueError, "`q` is 0, but must be > 0"),
        (lambda: quniform(0.05, 1, 0.1), ValueError,
         "`lower` is 0.05, but must be a multiple of `q` (0.1)"),
        (lambda: randint(3, 3), ValueError, "`lower` is 3, but must be < `upper` (3)"),
        (lambda: randint(0, 1.5), TypeError, "`upper` is 1.5, but must be an int"),
        (lambda: qrandint(1, 4, 5), ValueError, "`q` is 5, but no multiple of it lies in"),
        (lambda: qrandint(1, 4, -1), ValueError, "`q` is -1, but must be > 0"),
        (lambda: lograndint(0, 10), ValueError, "`lower` is 0, but must be > 0 for a log scale"),
        (lambda: randn(0, 0), ValueError, "`sd` is 0, but must be > 0"),
        (lambda: choice([]), ValueError, "`categories` is [], but must not be empty"),
        (lambda: choice("abc"), TypeError, "`categories` is 'abc', but must be a list"),
        (lambda: grid_search([]), ValueError, "`values` is [], but must not be empty"),
        (lambda: sample_from(lambda a, b: a), TypeError, "must take no argument or one"),
        (lambda: sample_from(3), TypeError, "`func` is 3, but must be callable"),
    ],
)
def test_bad_arguments_are_named_with_their_value(
    make: Callable[[], object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        make()
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("domain", "text"),
    [
        (uniform(0, 1), "uniform(0, 1)"),
        (loguniform(1e-4, 0.1), "loguniform(0.0001, 0.1)"),
        (qloguniform(1e-4, 0.1, 1e-4, base=2), "qloguniform(0.0001, 0.1, 0.0001, base=2)"),
        (quniform(0, 1, 0.25), "quniform(0, 1, 0.25)"),
        (randint(0, 10), "randint(0, 10)"),
        (qrandint(0, 10, 2), "qrandint(0, 10, 2)"),
        (lograndint(1, 100), "lograndint(1, 100)"),
        (qlograndint(1, 100, 5), "qlograndint(1, 100, 5)"),
        (randn(0.5, 2), "randn(0.5, 2)"),
        (qrandn(0, 1, 0.5), "qrandn(0, 1, 0.5)"),
        (choice(["a", 1]), "choice(['a', 1])"),
        (grid_search([1, 2]), "grid_search([1, 2])"),
    ],
)
def test_repr_reads_like_the_call_that_made_it(domain: object, text: str) -> None:
    assert repr(domain) == text


def test_domains_are_typed_frozen_and_pickle() -> None:
    assert isinstance(uniform(0, 1), Float) and isinstance(randn(), Normal)
    assert isinstance(randint(0, 2), Integer) and isinstance(choice([1]), Categorical)
    assert isinstance(sample_from(lambda: 1), Function)
    assert isinstance(grid_search([1]), GridSearch)
    with pytest.raises(AttributeError):
        uniform(0, 1).lower = 3  # type: ignore[misc]
    for domain in (uniform(0, 1), qrandint(0, 10, 2), choice(["a"]), grid_search([1])):
        assert pickle.loads(pickle.dumps(domain)) == domain


def test_integer_exposes_its_inclusive_range() -> None:
    assert (randint(0, 10).low, randint(0, 10).high, randint(0, 10).step) == (0, 9, 1)
    assert (qrandint(1, 20, 5).low, qrandint(1, 20, 5).high) == (5, 20)


# --- grids ----------------------------------------------------------------------------------


def test_expand_grid_follows_rays_order_first_path_fastest() -> None:
    space = {
        "b": grid_search([1, 2]),
        "a": grid_search(["x", "y"]),
        "n": {"c": grid_search([True, False])},
        "lr": uniform(0, 1),
    }
    variants = expand_grid(space)
    assert [(v["a"], v["b"], v["n"]["c"]) for v in variants] == [
        ("x", 1, True), ("y", 1, True), ("x", 2, True), ("y", 2, True),
        ("x", 1, False), ("y", 1, False), ("x", 2, False), ("y", 2, False),
    ]
    assert all(v["lr"] == uniform(0, 1) for v in variants)  # domains stay for resolve()
    assert grid_size(space) == 8


def test_no_grid_is_one_variant_and_rays_dict_form_is_a_grid() -> None:
    assert grid_size({"a": 1, "b": uniform(0, 1)}) == 1
    assert expand_grid({"a": [1]}) == [{"a": [1]}]
    space = {"seed": {"grid_search": [0, 1, 2]}}
    assert grid_size(space) == 3
    assert [v["seed"] for v in expand_grid(space)] == [0, 1, 2]


def test_a_grid_inside_a_grid_value_is_expanded_too() -> None:
    space = {"opt": grid_search([{"name": "sgd", "m": grid_search([0.0, 0.9])}, {"name": "adam"}])}
    variants = expand_grid(space)
    assert variants == [
        {"opt": {"name": "sgd", "m": 0.0}},
        {"opt": {"name": "sgd", "m": 0.9}},
        {"opt": {"name": "adam"}},
    ]
    assert grid_size(space) == 3


def test_generate_variants_resamples_each_pass_over_the_grid() -> None:
    space = {"g": grid_search(["a", "b"]), "x": uniform(0, 1)}
    configs = list(generate_variants(space, np.random.default_rng(0), num_samples=3))
    assert [c["g"] for c in configs] == ["a", "b"] * 3
    assert len({c["x"] for c in configs}) == 6


# --- resolution -----------------------------------------------------------------------------


def test_resolve_samples_nested_domains_and_copies_plain_values() -> None:
    layers = [64, 64]
    model = {"lr": loguniform(1e-4, 1e-1), "layers": layers, "deep": {"k": randint(1, 3)}}
    space = {"model": model, "name": "run"}
    config = resolve(space, np.random.default_rng(0))
    assert 1e-4 <= config["model"]["lr"] < 1e-1
    assert config["model"]["deep"]["k"] in (1, 2)
    assert config["model"]["layers"] == layers and config["model"]["layers"] is not layers
    assert config["name"] == "run"
    assert space["model"]["lr"] == loguniform(1e-4, 1e-1)  # the space is left untouched


def test_sample_from_sees_the_other_values_even_other_sample_froms() -> None:
    space = {
        "c": sample_from(lambda spec: spec.config["b"] + 1),  # reads b, itself a sample_from
        "a": randint(5, 10),
        "b": sample_from(lambda spec: spec.config.a * 2),
        "n": {"x": uniform(0, 1), "y": sample_from(lambda spec: spec.config.n.x)},
        "z": sample_from(lambda: "no spec"),
    }
    for seed in range(5):
        config = resolve(space, np.random.default_rng(seed))
        assert config["b"] == 2 * config["a"]
        assert config["c"] == config["b"] + 1
        assert config["n"]["y"] == config["n"]["x"]
        assert config["z"] == "no spec"


def test_sample_from_in_a_circle_is_an_error_naming_both() -> None:
    space = {"a": sample_from(lambda spec: spec.config.b), "b": sample_from(lambda s: s.config.a)}
    with pytest.raises(ValueError, match="`a`, `b` read each other in a circle"):
        resolve(space, np.random.default_rng(0))


def test_resolve_refuses_a_grid_left_unexpanded() -> None:
    with pytest.raises(ValueError, match=r"`m/g` is grid_search.*expand_grid"):
        resolve({"m": {"g": grid_search([1])}}, np.random.default_rng(0))


def test_flatten_space_and_set_path() -> None:
    space = {"a": 1, "m": {"lr": uniform(0, 1), "g": {"grid_search": [1, 2]}}}
    assert flatten_space(space) == {("m", "lr"): uniform(0, 1), ("m", "g"): grid_search([1, 2])}
    config: dict[str, Any] = {"a": 1}
    set_path(config, ("m", "deep", "x"), 3)
    assert config == {"a": 1, "m": {"deep": {"x": 3}}}
    with pytest.raises(TypeError, match="`a` holds 1, not a dict"):
        set_path(config, ("a", "b"), 2)
