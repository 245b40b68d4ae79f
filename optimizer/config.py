"""The campaign file, validated into typed config.

Every error names the file, the key path and what was expected (``demo.yaml: search.trials:
Input should be greater than 0``), never a traceback: a campaign is user input.
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from jetson_agent import spec as agent_spec
from optimizer.device.client import TOKEN_ENV, check_agent_url
from optimizer.plugin_api.technique import CalibrationMethod

MAX_TRIALS = 100_000  # a search far past what any campaign runs: a typo, not a plan
MAX_WORKERS = 4096


class CampaignError(Exception):
    """A campaign file (or a search-space file it names) is unusable; the message says why."""


class _Strict(BaseModel):
    # NaN and infinity are never a setting: NaN would pass every bound (NaN <= 1 is false, so
    # pydantic would say "should be <= 1" of it), infinity is no limit a run can reach.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class BaselineTraining(_Strict):
    """How the baseline is trained when no checkpoint is given (cached under runs/): until
    validation stops improving (``patience``), or for exactly ``epochs`` on a one-cycle
    schedule when ``patience`` is null."""

    epochs: int = Field(
        200, ge=1, le=1000, description="the most epochs (exactly this many if patience is null)"
    )
    patience: int | None = Field(
        10, ge=1, description="stop after this many epochs without a validation gain"
    )
    lr: float = Field(1e-3, gt=0, le=1)
    weight_decay: float = Field(0.05, ge=0)
    batch_size: int = Field(64, ge=1)


class ModelConfig(_Strict):
    name: str = Field(min_length=1, description="timm model name, e.g. vit_tiny_patch16_224")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Path | None = None
    pretrained: bool = False
    train: BaselineTraining = BaselineTraining()


class TeacherConfig(_Strict):
    """Defaults to the unpruned baseline; another timm model needs its own checkpoint."""

    name: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Path | None = None

    @model_validator(mode="after")
    def _checkpoint_for_other_models(self) -> TeacherConfig:
        if self.name is not None and self.checkpoint is None:
            raise ValueError("a teacher other than the baseline needs a checkpoint")
        return self


class TaskConfig(_Strict):
    """A task an enabled plugin registers (``vitopt_register_tasks``), checked before anything
    is written: the built-ins are ``classification`` (top-1) and ``segmentation`` (mIoU:
    ``objective.max_accuracy_drop`` is then the largest mIoU drop allowed)."""

    name: str = Field(
        "classification",
        min_length=1,
        description="a registered task: classification, segmentation, or a plugin's",
    )


class DataConfig(_Strict):
    source: str = Field(
        "digits",
        description="a registered data source (vitopt plugins lists them): digits, imagefolder, "
        "uav_synthetic, uav_folder are built in; the source checks the settings it needs",
    )
    path: Path | None = None
    image_size: int = Field(32, ge=8, le=1024)
    batch_size: int = Field(64, ge=1)
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    calibration_size: int = Field(128, ge=1)
    calibration_method: CalibrationMethod = Field(
        "auto", description="activation ranges for int8: auto (the recipe's), minmax, percentile"
    )
    seed: int = 0


class ObjectiveConfig(_Strict):
    mode: Literal["latency", "pareto"] = "latency"
    metric: Literal["p50", "p90", "p99", "mean"] = "p50"
    max_accuracy_drop: float = Field(ge=0, le=1, description="absolute, e.g. 0.01 = 1 point")
    max_memory_mb: float | None = Field(None, gt=0)
    latency_first_cut: bool = True
    evaluate_on: Literal["auto", "host", "device"] = Field(
        "auto",
        description="where accuracy is measured: device (the agent runs the deployable engine on "
        "the test inputs; labels stay here), host (onnxruntime here), auto (device where the "
        "agent's backend is not onnxruntime and it evaluates, else host)",
    )


class ParamOverride(_Strict):
    """Narrow or fix one declared search parameter from the campaign file."""

    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool | None = None
    fixed: Any = None


class SearchConfig(_Strict):
    sampler: Literal["tpe", "random", "nsga2"] = "tpe"
    seed: int = 0
    trials: int = Field(20, ge=1, le=MAX_TRIALS)
    timeout_s: float | None = Field(None, gt=0)
    space: dict[str, ParamOverride] = Field(default_factory=dict)
    space_file: Path | None = None


class ExecutionConfig(_Strict):
    workers: int = Field(2, ge=0, le=MAX_WORKERS, description="parallel trials; 0 runs in-process")
    num_cpus: float = Field(1, gt=0, description="Ray CPUs each trial holds")
    num_gpus: float = Field(0, ge=0, description="Ray GPUs each trial holds (pins it to GPU nodes)")
    resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each trial holds, e.g. {a100: 1}"
    )
    ray_address: str | None = Field(
        None, description="join a running cluster: auto, or ray://host:10001; none starts one"
    )
    runtime_env: dict[str, Any] | None = Field(
        None, description="Ray runtime environment for the workers (working_dir, py_modules, pip)"
    )
    torch_threads: int = Field(1, ge=1)
    infra_retries: int = Field(
        2, ge=0, description="re-runs of a trial lost to the device or a dead worker, not counted"
    )

    @field_validator("ray_address")
    @classmethod
    def _ray_address(cls, address: str | None) -> str | None:
        if address is not None and not re.match(r"^(auto|local|ray://\S+|[\w.-]+:\d+)$", address):
            raise ValueError(f"{address!r} is not auto, local, ray://host:port or host:port")
        return address


class MeasureConfig(_Strict):
    """How every job of the campaign is timed: paired with the baseline's deployable model, in
    alternating blocks of each (see docs/measurement.md). Defaults and limits are the agent's."""

    warmup: int = Field(20, ge=0, description="untimed runs of each model before the rounds")
    iterations: int = Field(
        agent_spec.DEFAULT_PAIRED_BLOCK_ITERATIONS,
        ge=1,
        le=agent_spec.MAX_ITERATIONS,
        description="least iterations of a block",
    )
    repeats: int = Field(
        agent_spec.DEFAULT_PAIRED_ROUNDS,
        ge=1,
        le=agent_spec.MAX_ROUNDS,
        description="least rounds (a block of each model)",
    )
    min_repeat_ms: float = Field(
        agent_spec.DEFAULT_PAIRED_MIN_REPEAT_MS,
        ge=0,
        le=agent_spec.MAX_REPEAT_MS,
        description="least time of a block",
    )
    ratio_ci: float = Field(
        agent_spec.DEFAULT_RATIO_CI,
        ge=0,
        le=1,
        description="rounds go on until the speedup's 95% interval is this "
        "close on each side (relative); 0: exactly `repeats` rounds",
    )
    max_time_s: float = Field(
        agent_spec.DEFAULT_PAIRED_MAX_TIME_S,
        gt=0,
        le=agent_spec.MAX_DURATION_S,
        description="cap on a job's timed rounds",
    )
    quiet: bool = Field(
        True,
        description="an embedded agent pauses this host's trials while it times (a remote "
        "agent is unaffected)",
    )
    contention_limit: float | None = Field(
        0.10,
        gt=0,
        description="a job whose reference ran this much slower (relative) than the "
        "campaign's quiet reference latency was timed on a busy device and is timed again; "
        "null: never",
    )
    contention_retries: int = Field(
        2, ge=0, le=5, description="how many times a contended job is timed again at most"
    )

    def spec(self) -> dict[str, Any]:
        """The agent's spec fields for this campaign (precision and reference are per job)."""
        return self.model_dump(exclude={"quiet", "contention_limit", "contention_retries"})


class AgentsConfig(_Strict):
    urls: list[str] = Field(default_factory=list, description="the pool; none: an embedded agent")
    device: str | None = Field(
        None, description="the target device type when the pool holds several (see /v1/info)"
    )
    token_env: str = TOKEN_ENV
    reprobe_s: float = Field(
        10, gt=0, description="how long an agent that stopped answering rests before a re-probe"
    )
    wait_healthy_s: float = Field(
        120, ge=0, description="how long a measurement waits for a healthy agent before failing"
    )
    measure: MeasureConfig = MeasureConfig()

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        return [check_agent_url(url) for url in urls]


class StorageConfig(_Strict):
    """Where the study lives. A plain string in the campaign file is the URL."""

    url: str | None = Field(None, description="any Optuna RDB URL; default runs/NAME/study.db")
    retry_s: float = Field(
        60, ge=0, description="how long a locked or restarting database is retried before failing"
    )

    @model_validator(mode="before")
    @classmethod
    def _url_alone(cls, data: Any) -> Any:
        return {"url": data} if isinstance(data, str) else data

    @field_validator("url")
    @classmethod
    def _database_url(cls, url: str | None) -> str | None:
        """A URL SQLAlchemy can parse and has a dialect for, checked before anything trains
        (whether the dialect's driver is installed is checked when the storage opens)."""
        if url is None:
            return None
        try:
            make_url(url).get_dialect()
        except NoSuchModuleError as exc:  # an ArgumentError: first
            scheme = url.split(":", 1)[0]
            raise ValueError(
                f"{url!r}: no database kind {scheme!r} (sqlite:///FILE, postgresql://..., "
                "mysql://...)"
            ) from exc
        except (ArgumentError, ValueError) as exc:
            raise ValueError(f"{url!r} is not a database URL (e.g. postgresql://host/db)") from exc
        return url


class PluginsConfig(_Strict):
    disable: list[str] = Field(default_factory=list)


class Campaign(_Strict):
    name: str = Field(description="the study's name and its folder runs/NAME")
    model: ModelConfig
    teacher: TeacherConfig = TeacherConfig()
    task: TaskConfig = TaskConfig()
    data: DataConfig = DataConfig()
    objective: ObjectiveConfig
    search: SearchConfig = SearchConfig()
    execution: ExecutionConfig = ExecutionConfig()
    agents: AgentsConfig = AgentsConfig()
    storage: StorageConfig = StorageConfig()
    plugins: PluginsConfig = PluginsConfig()
    source: Path | None = Field(None, exclude=True)

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", name):
            raise ValueError(
                f"{name!r} is not a folder name under runs/: up to 100 letters, digits, _ . -, "
                "starting with a letter or digit"
            )
        return name

    @property
    def run_dir(self) -> Path:
        return Path("runs") / self.name

    @property
    def storage_url(self) -> str:
        return self.storage.url or f"sqlite:///{self.run_dir / 'study.db'}"


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (YAML
    itself keeps the last one silently: a second ``objective:`` would replace the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping
)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise CampaignError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise CampaignError(f"{path}: not a text file ({exc.reason})") from exc
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no object tags
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise CampaignError(
            f"{path}:{where}: not valid YAML: {getattr(exc, 'problem', exc)}"
        ) from exc


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The keys the campaign file allows at ``loc`` (a section's path), for suggestions."""
    model: Any = Campaign
    parts = list(loc)
    while parts:
        field = model.model_fields.get(parts.pop(0))
        if field is None:
            return []
        model = field.annotation
        if typing.get_origin(model) is dict:  # search.space: NAME -> ParamOverride
            model = typing.get_args(model)[1]
            if parts:
                parts.pop(0)  # the NAME
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return list(model.model_fields)


def _first_error(path: Path, exc: ValidationError) -> str:
    """One line for the most telling error: an unknown key first (with the key it most likely
    meant), since a misspelt key also makes the key it meant missing."""
    errors = sorted(exc.errors(), key=lambda error: error["type"] != "extra_forbidden")
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if first["type"] == "extra_forbidden":
        *section, key = first["loc"]
        known = [name for name in _fields_at(tuple(section)) if name != "source"]
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = (
            f"; did you mean {close[0]}?"
            if close
            else (f"; known: {', '.join(known)}" if known else "")
        )
        return f"{path}: {_location(first['loc'])}: unknown key{hint}{more}"
    if first["type"] in ("model_type", "dict_type"):  # pydantic: "instance of SearchConfig"
        message = f"expected a section (a mapping), got {first['input']!r}"
    else:
        message = first["msg"].removeprefix("Value error, ")
    return f"{path}: {_location(first['loc'])}: {message}{more}"


def _set(data: dict[str, Any], dotted: str, value: Any, path: Path) -> None:
    """``data[a][b] = value`` for ``a.b``; a section the file leaves empty becomes one."""
    node = data
    *parents, leaf = dotted.split(".")
    for depth, key in enumerate(parents):
        if node.get(key) is None:
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            where = ".".join(parents[: depth + 1])
            raise CampaignError(f"{path}: {where}: expected a section (a mapping), got {node!r}")
    node[leaf] = value


def load_campaign(path: Path | str, **overrides: Any) -> Campaign:
    """Read and validate ``path``; ``overrides`` replace dotted keys (``search.trials=5``)."""
    path = Path(path)
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise CampaignError(f"{path}: expected a mapping of sections at the top level")
    # A section given with nothing under it (``search:``) is a section of defaults.
    data = {key: value for key, value in data.items() if value is not None}
    if isinstance(data.get("storage"), str):  # the short form, so that storage.url overrides it
        data["storage"] = {"url": data["storage"]}
    for dotted, value in overrides.items():
        if value is not None:
            _set(data, dotted, value, path)
    search = data.get("search")
    space_file = search.get("space_file") if isinstance(search, dict) else None
    if space_file:
        space_path = (path.parent / space_file).resolve()
        space = _read_yaml(space_path)
        if not isinstance(space, dict):
            raise CampaignError(f"{space_path}: expected a mapping of parameter overrides")
        search["space"] = {**space, **(search.get("space") or {})}
    try:
        campaign = Campaign.model_validate(data)
    except ValidationError as exc:
        raise CampaignError(_first_error(path, exc)) from None
    return _absolute_paths(campaign).model_copy(update={"source": path})


def _absolute_paths(campaign: Campaign) -> Campaign:
    """Paths the campaign names, made absolute against the directory ``vitopt`` runs in: a Ray
    worker runs elsewhere (the folders themselves must exist on every node)."""

    def resolved(section: Any, field: str) -> Any:
        value = getattr(section, field)
        return section if value is None else section.model_copy(update={field: value.resolve()})

    return campaign.model_copy(
        update={
            "model": resolved(campaign.model, "checkpoint"),
            "teacher": resolved(campaign.teacher, "checkpoint"),
            "data": resolved(campaign.data, "path"),
        }
    )
