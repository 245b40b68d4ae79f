"""The search space: declared by techniques, narrowed by the campaign, fitted to the device."""

from __future__ import annotations

import optuna
import pytest

from optimizer.config import CampaignError, ParamOverride
from optimizer.search_space import build_search_space
from optimizer.technique import ParamSpec

DECLARED = [
    ParamSpec("prune.method", "categorical", "none", choices=("none", "heads", "mlp")),
    ParamSpec(
        "prune.ratio", "float", 0.3, low=0.1, high=0.7, when={"prune.method": ["heads", "mlp"]}
    ),
    ParamSpec("train.epochs", "int", 0, low=0, high=4),
    ParamSpec("quantize.precision", "categorical", "fp32", choices=("fp32", "fp16", "int8")),
]


def _sample_many(space, n: int = 40) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    return [space.sample(study.ask()) for _ in range(n)]


def test_device_precisions_are_removed_with_a_note() -> None:
    space = build_search_space(DECLARED, {}, ["fp32", "int8"])
    assert space.notes == ("quantize.precision: removed fp16 (the device runs fp32, int8)",)
    assert {p["quantize.precision"] for p in _sample_many(space)} == {"fp32", "int8"}


def test_no_runnable_precision_is_an_error() -> None:
    overrides = {"quantize.precision": ParamOverride(choices=["fp16"])}
    with pytest.raises(CampaignError, match="none of the choices can run on the device"):
        build_search_space(DECLARED, overrides, ["fp32", "int8"])


def test_conditional_parameters_follow_their_condition() -> None:
    for params in _sample_many(build_search_space(DECLARED, {}, None)):
        if params["prune.method"] == "none":
            assert params["prune.ratio"] == 0.3  # the default, not sampled
        else:
            assert 0.1 <= params["prune.ratio"] <= 0.7


def test_overrides_narrow_and_fix_but_baseline_stays_do_nothing() -> None:
    overrides = {
        "prune.ratio": ParamOverride(low=0.4, high=0.5),
        "train.epochs": ParamOverride(low=1, high=2),
        "prune.method": ParamOverride(fixed="heads"),
    }
    space = build_search_space(DECLARED, overrides, None)
    for params in _sample_many(space):
        assert params["prune.method"] == "heads"
        assert 0.4 <= params["prune.ratio"] <= 0.5
        assert 1 <= params["train.epochs"] <= 2
    assert space.baseline == {
        "prune.method": "none",
        "prune.ratio": 0.3,
        "train.epochs": 0,
        "quantize.precision": "fp32",
    }


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"prune.ration": ParamOverride(low=0.1)}, "search.space.prune.ration: no installed"),
        ({"prune.method": ParamOverride(choices=["all"])}, "['all'] not among the choices"),
        (
            {"prune.ratio": ParamOverride(choices=[0.1])},
            "choices given, but prune.ratio is a float",
        ),
        ({"prune.ratio": ParamOverride(low=0.9, high=0.2)}, "needs low <= high"),
    ],
)
def test_bad_overrides_name_the_parameter(overrides: dict, fragment: str) -> None:
    with pytest.raises(CampaignError) as error:
        build_search_space(DECLARED, overrides, None, source="c.yaml")
    assert str(error.value).startswith("c.yaml: search.space.")
    assert fragment in str(error.value)
