"""Campaign files: valid ones load; broken ones give one clear line naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from optimizer.config import CampaignError, load_campaign

REPO = Path(__file__).resolve().parent.parent
MINIMAL = {
    "name": "t",
    "model": {"name": "vit_tiny_patch16_224"},
    "objective": {"max_accuracy_drop": 0.01},
}


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "campaign.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _with(**sections: object) -> dict:
    data = {**MINIMAL}
    for dotted, value in sections.items():
        node = data
        *parents, leaf = dotted.split("__")
        for key in parents:
            node[key] = dict(node.get(key) or {})
            node = node[key]
        node[leaf] = value
    return data


@pytest.mark.parametrize(
    "data, fragment",
    [
        ("name: [unclosed", "line 1: not valid YAML"),
        ("- just\n- a list\n", "expected a mapping of sections"),
        ({"name": "t", "objective": {"max_accuracy_drop": 0.01}}, "model: Field required"),
        (_with(objective={}), "objective.max_accuracy_drop: Field required"),
        (
            _with(objective={"max_accuracy_drop": 2}),
            "objective.max_accuracy_drop: Input should be less than or equal to 1",
        ),
        (
            _with(objective={"max_accuracy_drop": 0.01, "mode": "fastest"}),
            "objective.mode: Input should be 'latency' or 'pareto'",
        ),
        (_with(search__trials=0), "search.trials: Input should be greater than or equal to 1"),
        (
            _with(search__sampler="grid"),
            "search.sampler: Input should be 'tpe', 'random' or 'nsga2'",
        ),
        (_with(data__image_size="big"), "data.image_size: Input should be a valid integer"),
        (
            _with(data__calibration_method="entropy"),
            "data.calibration_method: Input should be 'auto', 'minmax' or 'percentile'",
        ),
        (
            _with(execution__workers=-1),
            "execution.workers: Input should be greater than or equal to 0",
        ),
        (_with(agents__urls=["ftp://nano"]), "agents.urls: 'ftp://nano' is not an agent URL"),
        (_with(modle={"name": "x"}), "modle: unknown key; did you mean model?"),
        (
            _with(search__space={"prune.ratio": {"lo": 0.1}}),
            "search.space.prune.ratio.lo: unknown key; did you mean low?",
        ),
        (_with(name="my campaign!"), "name: 'my campaign!' is not a folder name under runs/"),
        # What a careless user writes (issue 11): each one line naming the key.
        (_with(search="fast"), "search: expected a section (a mapping), got 'fast'"),
        (_with(storage="foo://bar"), "storage.url: 'foo://bar': no database kind 'foo'"),
        (_with(storage="not a url"), "storage.url: 'not a url' is not a database URL"),
        (
            _with(objective={"max_acuracy_drop": 0.01}),
            "objective.max_acuracy_drop: unknown key; did you mean max_accuracy_drop?",
        ),
        (
            _with(objective={"max_accuracy_drop": float("nan")}),
            "objective.max_accuracy_drop: Input should be a finite number",
        ),
        (_with(search__timeout_s=float("inf")), "search.timeout_s: Input should be a finite"),
        (_with(search__trials=1e30), "search.trials: Unable to parse input"),
        (_with(search__trials=1e6), "search.trials: Input should be less than or equal to 100000"),
        (_with(search__trials=2.5), "search.trials: Input should be a valid integer"),
        (_with(name=".."), "name: '..' is not a folder name under runs/"),
        (_with(name="."), "name: '.' is not a folder name under runs/"),
        (_with(name="-x"), "name: '-x' is not a folder name under runs/"),
        (yaml.safe_dump(MINIMAL) + "objective:\n  max_accuracy_drop: 0.5\n", "duplicate key"),
        ("name: t\nname: u\n", "line 2: not valid YAML: duplicate key 'name'"),
        (b"\xff\xfe".decode("latin-1"), "expected a mapping of sections"),
        (
            _with(teacher={"name": "deit_small_patch16_224"}),
            "teacher: a teacher other than the baseline needs a checkpoint",
        ),
    ],
)
def test_broken_campaigns_name_the_key(tmp_path: Path, data: object, fragment: str) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(CampaignError) as error:
        load_campaign(path)
    message = str(error.value)
    assert message.startswith(str(path))
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize("section", ["search", "data", "execution"])
def test_an_empty_section_is_its_defaults(tmp_path: Path, section: str) -> None:
    path = _write(tmp_path, yaml.safe_dump(MINIMAL) + f"{section}:\n")
    assert load_campaign(path).search.trials == 20
    assert load_campaign(path, **{"search.trials": 3}).search.trials == 3


def test_an_override_into_a_section_that_is_not_one_names_it(tmp_path: Path) -> None:
    path = _write(tmp_path, _with(search="fast"))
    with pytest.raises(
        CampaignError, match=r"search: expected a section \(a mapping\), got 'fast'"
    ):
        load_campaign(path, **{"search.trials": 3})


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CampaignError, match="cannot read"):
        load_campaign(tmp_path / "nope.yaml")


def test_defaults_overrides_and_storage(tmp_path: Path) -> None:
    campaign = load_campaign(_write(tmp_path, MINIMAL), **{"search.trials": 7, "storage.url": None})
    assert campaign.search.trials == 7
    assert campaign.storage_url == "sqlite:///runs/t/study.db"
    assert campaign.data.source == "digits"
    assert campaign.objective.latency_first_cut is True


def test_space_file_is_merged_and_campaign_wins(tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text(
        "prune.ratio: {low: 0.1, high: 0.4}\nquantize.precision: {choices: [fp32]}\n"
    )
    data = _with(search__space_file="space.yaml", search__space={"prune.ratio": {"high": 0.3}})
    campaign = load_campaign(_write(tmp_path, data))
    assert campaign.search.space["prune.ratio"].high == 0.3
    assert campaign.search.space["prune.ratio"].low is None
    assert campaign.search.space["quantize.precision"].choices == ["fp32"]


def test_shipped_campaigns_are_valid() -> None:
    files = sorted((REPO / "search_spaces").rglob("*.yaml"))
    assert files
    for path in files:
        load_campaign(path)


def test_storage_as_a_plain_url_or_a_section(tmp_path: Path) -> None:
    short = dict(MINIMAL, storage="postgresql://u@127.0.0.1:5432/db")
    assert load_campaign(_write(tmp_path, short)).storage_url == "postgresql://u@127.0.0.1:5432/db"
    overridden = load_campaign(_write(tmp_path, short), **{"storage.url": "sqlite:///x.db"})
    assert overridden.storage_url == "sqlite:///x.db"
    assert overridden.storage.retry_s == 60
    section = dict(MINIMAL, storage={"url": "sqlite:///y.db", "retry_s": 5})
    assert load_campaign(_write(tmp_path, section)).storage.retry_s == 5


def test_ray_address_forms(tmp_path: Path) -> None:
    for good in ("auto", "ray://10.0.0.5:10001", "head:6379"):
        data = dict(MINIMAL, execution={"ray_address": good})
        assert load_campaign(_write(tmp_path, data)).execution.ray_address == good
    with pytest.raises(CampaignError, match=r"execution\.ray_address: .*is not auto"):
        load_campaign(_write(tmp_path, dict(MINIMAL, execution={"ray_address": "http://x"})))
