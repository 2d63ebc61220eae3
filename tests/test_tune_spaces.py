"""tune_spaces/*.yaml: loading, validation against the config schema, sampling, and Ray Tune conversion."""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from unlearn_core.config import ConfigError, RunConfig, flatten
from unlearn_core.methods import METHODS, get_method
from unlearn_core.search_space import (
    DEFAULT_OBJECTIVE,
    SPACES_DIR,
    Dim,
    SearchSpace,
    default_space_path,
    load_space,
    objective_value,
    parse_space,
    sample,
    trial_config,
    trial_overrides,
)

SPACE_FILES = sorted(SPACES_DIR.glob("*.yaml"))


def _pubg() -> dict[str, Any]:
    return yaml.safe_load(default_space_path("pubg").read_text())


def _with_dim(data: dict[str, Any], key: str, spec: Any) -> dict[str, Any]:
    """``data`` with one dim replaced, without its ``start`` points (they may not fit the new dim)."""
    out = copy.deepcopy(data)
    out["space"][key] = spec
    out.pop("start", None)
    return out


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _in_bounds(dim: Dim, value: Any) -> bool:
    if dim.kind in ("uniform", "loguniform"):
        return dim.args[0] <= value <= dim.args[1]
    if dim.kind == "randint":
        return isinstance(value, int) and dim.args[0] <= value < dim.args[1]
    return value in dim.args


# --------------------------------------------------------------------------- the shipped files


def test_one_space_per_registered_method():
    """``<method>.yaml`` for every method (the default space); a variant is ``<method>_<variant>.yaml``."""
    assert {p.stem for p in SPACE_FILES if p.stem in METHODS} == set(METHODS)
    for p in SPACE_FILES:
        assert p.stem in METHODS or any(p.stem.startswith(m + "_") for m in METHODS), p.name


def test_spaces_share_the_default_objective_unless_they_name_one():
    """No space file copies the objective: every shipped one uses DEFAULT_OBJECTIVE or extends it with
    terms of its own (``extra_terms``); a file's own block wins."""
    for path in SPACE_FILES:
        raw = yaml.safe_load(path.read_text()).get("objective")
        objective = load_space(path).objective
        if raw is None:
            assert objective == DEFAULT_OBJECTIVE, path.name
            continue
        assert set(raw) == {"extra_terms"}, f"{path.name}: copies the objective instead of extending it"
        assert (objective.metric, objective.mode) == (DEFAULT_OBJECTIVE.metric, DEFAULT_OBJECTIVE.mode)
        assert objective.terms == {**DEFAULT_OBJECTIVE.terms, **raw["extra_terms"]}, path.name
    probe = parse_space({**_pubg(), "objective": {"extra_terms": {"audit_probe.auc_gap": 2.0}}}).objective
    assert probe.terms["audit_probe.auc_gap"] == 2.0 and len(probe.terms) == len(DEFAULT_OBJECTIVE.terms) + 1
    with pytest.raises(ConfigError, match="extra_terms extends the default score; drop \\['metric'\\]"):
        parse_space({**_pubg(), "objective": {"metric": "x", "extra_terms": {"forget.leak_rate": 1.0}}})
    with pytest.raises(ConfigError, match="lower is better for 'forget.leak_rate'"):
        parse_space({**_pubg(), "objective": {"extra_terms": {"forget.leak_rate": -1.0}}})
    own = parse_space({**_pubg(), "objective": {"metric": "forget.leak_rate", "mode": "min"}}).objective
    assert own.metric == "forget.leak_rate" and not own.terms
    assert objective_value(DEFAULT_OBJECTIVE, {"forget.leak_rate": 0.5, "retain.vqa_acc": 0.75}) == 0.5 - 0.75


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: p.stem)
def test_every_space_loads_and_validates(path: Path):
    space = load_space(path)
    assert space.method == path.stem or path.stem.startswith(space.method + "_")
    assert "train.lr" in space.dims and "train.steps" in space.dims
    assert space.objective.mode in ("min", "max") and space.num_samples >= 1
    params = METHODS[space.method].Params.model_fields
    for key in space.dims:
        assert not key.startswith("method.params.") or key.split(".")[2] in params


def test_pubg_space_searches_the_guidance_knobs_by_itself():
    """The default budget: the three weights, lr, steps, top-k and the saliency mask, Optuna's TPE, a
    grace period that lets a 40-step trial finish, no start point (docs/methods.md measures it)."""
    space = load_space(default_space_path("pubg"))
    dims = space.dims
    for w in ("w_ga", "w_bg", "w_ret"):
        assert dims[f"method.params.{w}"].kind == "loguniform"
    assert set(dims["method.params.mask"].args) == {"none", "both"}
    assert set(dims["method.params.top_k"].args) == {4, 16}
    assert (space.search, space.grace_period, space.start) == ("optuna", 40, ())
    assert space.grace_period >= min(dims["train.steps"].args)  # no trial stopped before its 40th step


def test_the_demo_sweep_is_the_pubg_space_with_the_hand_tuned_start():
    from pipelines.demo import DEMO_SWEEP_SPACE

    demo, pubg = load_space(DEMO_SWEEP_SPACE), load_space(default_space_path("pubg"))
    assert (demo.dims, demo.base, demo.grace_period) == (pubg.dims, pubg.base, pubg.grace_period)
    (point,) = demo.start
    assert point["method.params.w_ga"] == 0.02 and point["train.steps"] == 60


def test_sweep_prepares_only_its_first_trials_inputs_up_front():
    """The demo's 2-trial PUBG sweep used to build a teacher cache for each of 3 instructions and a
    mask for each of 3 groups before any trial; the driver now prepares the start point's inputs only
    (a later trial builds the ones it samples, once, under a lock)."""
    from pipelines.demo import DEMO_SWEEP_SPACE
    from pipelines.sweep.driver import first_points

    space = load_space(DEMO_SWEEP_SPACE)
    points = first_points(space, seed=0)
    (point,) = space.start
    assert len(points) == 1 and {k: points[0][k] for k in point} == point
    assert set(points[0]) == set(space.dims)  # completed by a sample: every dim has a value
    no_start = load_space(default_space_path("npo"))
    assert not no_start.start and first_points(no_start, seed=0) == first_points(no_start, seed=0)
    assert len(first_points(no_start, seed=0)) == 1


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: p.stem)
def test_samples_are_in_bounds_and_valid_configs(path: Path):
    space = load_space(path)
    rng = random.Random(0)
    for _ in range(25):
        point = sample(space, rng)
        assert set(point) == set(space.dims)
        for key, value in point.items():
            assert _in_bounds(space.dims[key], value), (key, value)
        cfg = trial_config(space, point)
        assert cfg.method.name == space.method
        get_method(cfg.method.name, cfg.method.params)
        flat = flatten(cfg)
        assert all(flat[k] == v for k, v in {**space.base, **point}.items())


# --------------------------------------------------------------------------- validation errors


def test_typo_key_is_an_error_naming_the_key(tmp_path: Path):
    data = _with_dim(_pubg(), "method.params.w_bgg", {"loguniform": [0.1, 1.0]})
    with pytest.raises(ConfigError, match=r"bad\.yaml: space\.method\.params\.w_bgg: unknown field") as err:
        load_space(_write(tmp_path, data))
    assert "method.params.w_bg" in str(err.value)  # lists the valid fields
    with pytest.raises(ConfigError, match=r"space\.train\.lrr: unknown config field"):
        parse_space(_with_dim(_pubg(), "train.lrr", {"choice": [1.0e-4]}))
    with pytest.raises(ConfigError, match=r"space\.train: is a section"):
        parse_space(_with_dim(_pubg(), "train", {"choice": [1]}))
    with pytest.raises(ConfigError, match=r"space\.method\.name: set the top-level"):
        parse_space(_with_dim(_pubg(), "method.name", {"choice": ["npo"]}))
    bad_base = copy.deepcopy(_pubg())
    bad_base["base"]["train.eval_evry"] = 3
    with pytest.raises(ConfigError, match=r"base\.train\.eval_evry"):
        parse_space(bad_base)


@pytest.mark.parametrize(
    ("method", "key", "spec", "pattern"),
    [
        (
            "pubg",
            "method.params.w_bg",
            {"uniform": [-1, 1.0]},
            r"space\.method\.params\.w_bg: bound -1 invalid: .*>= 0",
        ),
        (
            "npo",
            "method.params.beta",
            {"uniform": [0, 0.5]},
            r"space\.method\.params\.beta: bound 0 invalid: .*> 0",
        ),
        (
            "ga",
            "train.lr",
            {"loguniform": [1.0e-4, 2.0]},
            r"space\.train\.lr: bound 2\.0 invalid: .*train\.lr",
        ),
        (
            "pubg",
            "method.params.instruction",
            {"choice": ["default", "nope"]},
            r"instruction: value 'nope' invalid",
        ),
        ("kl", "train.steps", {"randint": [0, 10]}, r"space\.train\.steps: bound 0 invalid"),
    ],
)
def test_out_of_range_bound_names_the_key(tmp_path: Path, method: str, key: str, spec: Any, pattern: str):
    data = yaml.safe_load(default_space_path(method).read_text())
    with pytest.raises(ConfigError, match=pattern) as err:
        load_space(_write(tmp_path, _with_dim(data, key, spec)))
    assert str(err.value).startswith(str(tmp_path / "bad.yaml"))


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        (
            {"lognormal": [1, 2]},
            r"unknown distribution 'lognormal'; valid: uniform, loguniform, randint, choice, grid",
        ),
        ({"loguniform": [0.0, 1.0]}, r"loguniform needs 0 < low"),
        ({"uniform": [1.0, 0.5]}, r"uniform needs low < high"),
        ({"uniform": [1.0]}, r"needs \[low, high\]"),
        ({"choice": []}, r"non-empty list"),
        ({"uniform": [0.1, 1.0], "choice": [1]}, r"expected one distribution"),
        (0.5, r"expected one distribution"),
    ],
)
def test_malformed_distributions(spec: Any, pattern: str):
    with pytest.raises(ConfigError, match=r"space\.method\.params\.w_bg: .*" + pattern):
        parse_space(_with_dim(_pubg(), "method.params.w_bg", spec))


def test_integer_fields_and_randint_upper_bound_is_exclusive():
    with pytest.raises(ConfigError, match=r"train\.steps: uniform samples floats .* integer"):
        parse_space(_with_dim(_pubg(), "train.steps", {"uniform": [10, 20]}))
    with pytest.raises(ConfigError, match=r"randint needs integer bounds"):
        parse_space(_with_dim(_pubg(), "train.steps", {"randint": [10, 20.5]}))
    # top_k <= 1_000_000: high = 1_000_001 is fine because the upper bound is never sampled
    space = parse_space(_with_dim(_pubg(), "method.params.top_k", {"randint": [1, 1_000_001]}))
    assert space.dims["method.params.top_k"] == Dim("randint", (1, 1_000_001))
    with pytest.raises(ConfigError, match=r"top_k: bound 1000001 invalid"):
        parse_space(_with_dim(_pubg(), "method.params.top_k", {"randint": [1, 1_000_002]}))


def test_top_level_errors():
    with pytest.raises(ConfigError, match=r"method: unknown method 'nope'; valid: .*pubg"):
        parse_space({**_pubg(), "method": "nope"})
    with pytest.raises(ConfigError, match=r"unknown top-level keys \['spaces'\]"):
        parse_space({**_pubg(), "spaces": {}})
    with pytest.raises(ConfigError, match=r"num_samples"):
        parse_space({**_pubg(), "num_samples": 0})
    with pytest.raises(ConfigError, match=r"space: missing"):
        parse_space({k: v for k, v in _pubg().items() if k != "space"})
    with pytest.raises(ConfigError, match=r"objective\.metric: required"):
        parse_space({**_pubg(), "objective": {"mode": "min"}})
    with pytest.raises(ConfigError, match=r"search space file not found"):
        load_space("tune_spaces/nope.yaml")


def test_start_points_are_validated_against_their_dims():
    from pipelines.demo import DEMO_SWEEP_SPACE

    space = load_space(DEMO_SWEEP_SPACE)
    (point,) = space.start  # the README's hand-tuned run: the demo sweep's first trial
    assert (
        point["method.params.w_ga"] == 0.02
        and point["train.steps"] == 60
        and point["method.params.mask"] == "none"
    )
    assert trial_config(space, {**sample(space, random.Random(0)), **point}).method.params["w_ga"] == 0.02

    def bad(start: Any, pattern: str, **extra: Any) -> None:
        with pytest.raises(ConfigError, match=pattern):
            parse_space({**_pubg(), "start": start, **extra})

    bad([{"train.lr": 0.5}], r"start\[0\]\.train\.lr: 0\.5 outside loguniform \[0\.0003, 0\.001\]")
    bad(
        [{}, {"train.steps": 30}],
        r"start\[1\]\.train\.steps: 30 is not one of the choice values \[40, 60\]",
    )
    bad([{"train.seed": 1}], r"start\[0\]\.train\.seed: not a dim of space; valid: method\.params\.w_ga")
    bad([{"method.params.w_ga": "1e-2x"}], r"start\[0\]\.method\.params\.w_ga: '1e-2x' outside")
    bad({"train.lr": 1e-3}, r"start: must be a list of points")
    bad([{}] * 3, r"start: 3 points but num_samples is 2", num_samples=2)
    grid = _with_dim(_pubg(), "method.params.mask", {"grid": ["none", "vision"]})
    with pytest.raises(ConfigError, match=r"start: not supported together with grid dims"):
        parse_space({**grid, "start": [{"train.steps": 40}]})
    # A partial point keeps the other dims sampled; YAML exponents without a dot are numbers here too.
    partial = parse_space({**_pubg(), "start": [{"train.lr": "1e-3"}]})
    assert partial.start == ({"train.lr": 1e-3},)


def test_objective_signs_are_checked_and_value_computed():
    bad = {**_pubg(), "objective": {"metric": "score", "mode": "min", "terms": {"retain.vqa_acc": 1.0}}}
    with pytest.raises(ConfigError, match=r"objective\.terms\.retain\.vqa_acc: higher is better"):
        parse_space(bad)
    with pytest.raises(ConfigError, match=r"objective\.metric: lower is better"):
        parse_space({**_pubg(), "objective": {"metric": "forget.leak_rate", "mode": "max"}})
    single = parse_space({**_pubg(), "objective": {"metric": "forget.leak_rate", "mode": "min"}}).objective
    assert objective_value(single, {"forget.leak_rate": 0.25}) == 0.25
    terms = load_space(default_space_path("pubg")).objective
    metrics = {"forget.leak_rate": 0.5, "retain.vqa_acc": 0.75}  # the others: no samples, skipped
    assert math.isclose(objective_value(terms, metrics), 0.5 - 0.75)
    with pytest.raises(ConfigError, match="none of"):
        objective_value(terms, {"other": 1.0})


def test_yaml_exponent_without_dot_is_a_number(tmp_path: Path):
    text = (
        "method: ga\n"
        "space:\n"
        "  train.lr: {loguniform: [1e-5, 1e-3]}\n"
        "  train.steps: {choice: [10, 20]}\n"
        "objective: {metric: forget.leak_rate, mode: min}\n"
    )
    assert yaml.safe_load(text)["space"]["train.lr"]["loguniform"] == ["1e-5", "1e-3"]  # PyYAML 1.1
    p = tmp_path / "ga.yaml"
    p.write_text(text)
    space = load_space(p)
    assert space.dims["train.lr"] == Dim("loguniform", (1e-5, 1e-3))
    assert space.base == {} and space.num_samples == 8


def test_trial_overrides_merge_base_and_sampled():
    space = load_space(default_space_path("npo"))
    point = sample(space, random.Random(1))
    over = trial_overrides(space, {**point, "unrelated": 1})
    assert over["method.name"] == "npo" and over["train.eval_every"] == space.base["train.eval_every"]
    assert {k: over[k] for k in point} == point and "unrelated" not in over
    with pytest.raises(ConfigError, match=r"lacks the sampled keys \['train\.lr'\]"):
        trial_overrides(space, {k: v for k, v in point.items() if k != "train.lr"})
    pubg_cfg = RunConfig(method={"name": "pubg", "params": {"w_bg": 2.0}})
    assert trial_config(space, point, pubg_cfg).method.params == {
        k.split(".")[2]: v for k, v in point.items() if k.startswith("method.params.")
    }


# --------------------------------------------------------------------------- Ray Tune


def _space_with_grid() -> SearchSpace:
    return parse_space(_with_dim(_pubg(), "method.params.bg_norm", {"grid": ["sequence", "token"]}))


def test_optuna_converts_every_space():
    from ray.tune.search.optuna import OptunaSearch

    from pipelines.sweep.param_space import has_grid, tune_param_space

    for path in SPACE_FILES:
        space = load_space(path)
        converted = OptunaSearch.convert_search_space(tune_param_space(space))
        assert set(converted) == set(space.dims)
    pubg = OptunaSearch.convert_search_space(tune_param_space(load_space(default_space_path("pubg"))))
    assert list(pubg["method.params.top_k"].choices) == [4, 16]
    assert "none" in pubg["method.params.mask"].choices
    grid = _space_with_grid()
    assert has_grid(grid)
    with pytest.raises(ValueError, match="[Gg]rid"):
        OptunaSearch.convert_search_space(tune_param_space(grid))
    converted = OptunaSearch.convert_search_space(tune_param_space(grid, grid_as_choice=True))
    assert list(converted["method.params.bg_norm"].choices) == ["sequence", "token"]


def _run_tuner(
    space: SearchSpace, tmp_path: Path, search_alg: Any = None, grid_as_choice: bool = False
) -> Any:
    from ray import tune

    from pipelines.sweep.param_space import tune_param_space

    def trainable(config: dict[str, Any]) -> None:
        cfg = trial_config(space, config)  # the dotted keys arrive as they are
        tune.report({"score": cfg.train.lr * cfg.train.steps, "n_keys": len(config)})

    metric = {} if search_alg is not None else {"metric": "score", "mode": "min"}
    tuner = tune.Tuner(
        trainable,
        param_space=tune_param_space(space, grid_as_choice=grid_as_choice),
        tune_config=tune.TuneConfig(num_samples=3, search_alg=search_alg, **metric),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
    )
    return tuner.fit()


def _check_results(results: Any, space: SearchSpace, n_trials: int) -> None:
    assert not results.errors
    assert len(results) == n_trials
    for res in results:
        assert set(res.config) == set(space.dims)
        for key, value in res.config.items():
            assert _in_bounds(space.dims[key], value), (key, value)
        assert res.metrics["n_keys"] == len(space.dims)
    assert "config/method.params.w_bg" in results.get_dataframe().columns


def test_tuner_runs_the_space(ray_local, tmp_path: Path):
    space = _space_with_grid()
    _check_results(_run_tuner(space, tmp_path), space, n_trials=6)  # 3 samples x 2 grid points


def test_tuner_with_optuna(ray_local, tmp_path: Path):
    from ray.tune.search.optuna import OptunaSearch

    space = load_space(default_space_path("pubg"))
    results = _run_tuner(space, tmp_path, OptunaSearch(metric="score", mode="min", seed=0))
    _check_results(results, space, n_trials=3)


@pytest.mark.parametrize("search", ["random", "optuna"])
def test_start_point_is_the_first_trial(ray_local, tmp_path: Path, search: str):
    """The sweep's TuneConfig runs the space's start point first, then samples; num_samples in total."""
    from ray import tune

    from pipelines.demo import DEMO_SWEEP_SPACE
    from pipelines.sweep.param_space import tune_param_space
    from pipelines.sweep.tune_config import OBJECTIVE, build_tune_config, load_sweep_space

    space, objectives = load_sweep_space(DEMO_SWEEP_SPACE)
    tune_config = build_tune_config(
        objectives, space, RunConfig(), num_samples=3, scheduler="none", search=search, max_concurrent=1
    )

    def trainable(config: dict[str, Any]) -> None:
        tune.report({OBJECTIVE: config["train.lr"], "step": 1, "final": 1})

    results = tune.Tuner(
        tune.with_resources(trainable, {"CPU": 0.5}),
        param_space=tune_param_space(space),
        tune_config=tune_config,
        run_config=tune.RunConfig(name=f"start-{search}", storage_path=str(tmp_path), verbose=0),
    ).fit()
    assert len(results) == 3 and not results.errors
    by_name = sorted(results, key=lambda r: Path(r.path).name)
    (point,) = space.start
    assert {k: by_name[0].config[k] for k in point} == point
    for res in by_name[1:]:  # sampled: in bounds, and not the start point again
        assert all(_in_bounds(space.dims[k], v) for k, v in res.config.items())
        assert res.config["train.lr"] != point["train.lr"]


def test_a_space_names_its_search_and_asha_grace_period():
    """`search:` is the space's default algorithm (the CLI's --search overrides it) and `grace_period:`
    ASHA's, in steps (default: the first evaluation, train.eval_every)."""
    from pipelines.sweep.tune_config import _scheduler
    from unlearn_core.config import RunConfig

    space = parse_space({**_pubg(), "search": "optuna", "grace_period": 40})
    assert (space.search, space.grace_period) == ("optuna", 40)

    def first_rung(scheduler: Any) -> int:  # ASHA's first milestone is its grace period
        return min(int(milestone) for milestone, _ in scheduler._brackets[0]._rungs)

    assert first_rung(_scheduler("asha", space, RunConfig())) == 40
    plain = parse_space({k: v for k, v in _pubg().items() if k not in ("search", "grace_period")})
    assert (plain.search, plain.grace_period) == (None, None)
    assert first_rung(_scheduler("asha", plain, RunConfig())) == int(plain.base["train.eval_every"])
    with pytest.raises(ConfigError, match=r"search: must be one of random, optuna, got 'tpe'"):
        parse_space({**_pubg(), "search": "tpe"})
    with pytest.raises(ConfigError, match=r"grace_period: must be an integer >= 1"):
        parse_space({**_pubg(), "grace_period": 0})
