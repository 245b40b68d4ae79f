"""The search space: declared by techniques, narrowed by the campaign, fitted to the device."""

from __future__ import annotations

import optuna
import pytest

from optimizer.campaign.search_space import SearchSpace, build_search_space, offered_choices
from optimizer.config import CampaignError, ParamOverride
from optimizer.plugin_api import ParamSpec
from optimizer.plugin_host.checks import collect_techniques
from optimizer.plugin_host.manager import build_plugin_manager

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


CPU_AGENT = {
    "backend": {"name": "onnxruntime", "version": "onnxruntime 1.32.0 (CPUExecutionProvider)"},
    "precisions": ["fp32", "int8"],
}
NANO_AGENT = {
    "backend": {"name": "tensorrt", "version": "8.2.1.8"},
    "precisions": ["fp32", "fp16", "int8"],
}
CPU_PRECISIONS = {"quantize.precision": ["fp32", "int8"]}


def test_choices_the_device_does_not_offer_are_removed_with_a_note() -> None:
    space = build_search_space(DECLARED, {}, CPU_PRECISIONS)
    assert space.notes == ("quantize.precision: removed fp16 (the device runs fp32, int8)",)
    assert {p["quantize.precision"] for p in _sample_many(space)} == {"fp32", "int8"}


def test_no_offered_choice_is_an_error() -> None:
    overrides = {"quantize.precision": ParamOverride(choices=["fp16"])}
    with pytest.raises(CampaignError, match="none of the choices can run on the device"):
        build_search_space(DECLARED, overrides, CPU_PRECISIONS)
    fixed = {"quantize.precision": ParamOverride(fixed="fp16")}
    with pytest.raises(CampaignError, match="fixed to fp16, which the device cannot run"):
        build_search_space(DECLARED, fixed, CPU_PRECISIONS)


def test_choices_the_model_cannot_take_are_removed_with_a_note() -> None:
    allowed = {"quantize.precision": ["fp32", "fp16"]}
    space = build_search_space(DECLARED, {}, CPU_PRECISIONS, allowed=allowed)
    assert space.notes == (
        "quantize.precision: removed fp16 (the device runs fp32, int8)",
        "quantize.precision: removed int8 (the model takes fp32, fp16)",
    )
    assert {p["quantize.precision"] for p in _sample_many(space)} == {"fp32"}
    fixed = {"quantize.precision": ParamOverride(fixed="int8")}
    with pytest.raises(CampaignError, match="fixed to int8, which the model cannot take"):
        build_search_space(DECLARED, fixed, allowed=allowed)


def _builtin_space(device_info: dict, overrides: dict | None = None) -> SearchSpace:
    techniques = [r.technique for r in collect_techniques(build_plugin_manager())]
    declared = [spec for t in techniques for spec in t.search_space()]
    return build_search_space(declared, overrides or {}, offered_choices(techniques, device_info))


def test_the_cpu_agent_is_offered_onnxruntimes_int8_recipes_only() -> None:
    space = _builtin_space(CPU_AGENT)
    method = next(p for p in space.params if p.name == "quantize.method")
    assert method.choices == ("dynamic", "dynamic_per_channel", "static")
    assert method.default == "dynamic"
    assert (
        "quantize.method: removed qdq (the device runs dynamic, dynamic_per_channel, static)"
        in space.notes
    )
    sampled = _sample_many(space, 60)
    assert {p["quantize.method"] for p in sampled if p["quantize.precision"] == "int8"} == set(
        method.choices
    )
    with pytest.raises(CampaignError, match=r"quantize\.method: fixed to qdq, which the device"):
        _builtin_space(CPU_AGENT, {"quantize.method": ParamOverride(fixed="qdq")})


def test_a_tensorrt_agent_gets_the_qdq_recipe_and_fp16() -> None:
    space = _builtin_space(NANO_AGENT)
    by_name = {p.name: p for p in space.params}
    assert by_name["quantize.method"].choices == ("qdq",)
    assert by_name["quantize.precision"].choices == ("fp32", "fp16", "int8")
    with pytest.raises(CampaignError, match="none of the choices can run on the device"):
        _builtin_space(NANO_AGENT, {"quantize.method": ParamOverride(choices=["dynamic"])})


class _Offering:
    name = "offering"

    def __init__(self, answer: object) -> None:
        self.answer = answer

    def device_choices(self, device_info: dict) -> dict:
        if isinstance(self.answer, Exception):
            raise self.answer
        return {"prune.method": self.answer[device_info["backend"]["name"]]}


def test_offered_choices_come_from_the_techniques_that_say_so() -> None:
    class Silent:
        name = "silent"

    offering = _Offering({"onnxruntime": ["none", "mlp"]})
    assert offered_choices([Silent(), offering], CPU_AGENT) == {"prune.method": ("none", "mlp")}
    with pytest.raises(CampaignError, match="technique offering: device_choices failed: boom"):
        offered_choices([_Offering(RuntimeError("boom"))], CPU_AGENT)


def test_conditional_parameters_follow_their_condition() -> None:
    for params in _sample_many(build_search_space(DECLARED, {})):
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
    space = build_search_space(DECLARED, overrides)
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


def test_possible_values_cover_what_the_trials_run() -> None:
    declared = [
        *DECLARED,
        ParamSpec("distill.enabled", "bool", False),
        ParamSpec("distill.features", "bool", False, when={"distill.enabled": [True]}),
    ]
    overrides = {
        "prune.method": ParamOverride(choices=["heads", "mlp"]),
        "train.epochs": ParamOverride(low=1, high=2),
        "quantize.precision": ParamOverride(fixed="int8"),
    }
    space = build_search_space(declared, overrides)
    assert space.possible("prune.method") == ("heads", "mlp")
    assert space.possible("prune.ratio") == (0.1, 0.7)
    assert space.possible("train.epochs") == (1, 2)
    assert space.possible("quantize.precision") == ("int8",)
    assert space.possible("distill.features") == (False, True)
    for params in _sample_many(space):
        for name, value in params.items():
            values = space.possible(name)
            if isinstance(value, (bool, str)):
                assert value in values, name
            else:
                assert values[0] <= value <= values[1], name


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
        build_search_space(DECLARED, overrides, source="c.yaml")
    assert str(error.value).startswith("c.yaml: search.space.")
    assert fragment in str(error.value)
