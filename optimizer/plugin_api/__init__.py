"""vitopt's plugin API: everything a plugin imports, in one place.

::

    from optimizer.plugin_api import ParamSpec, StageContext, TaskBase, hookimpl

The contract: the hooks (:mod:`.hookspecs`), techniques (:mod:`.technique`), tasks
(:mod:`.task`), data sources (:mod:`.data_source`) and model families (:mod:`.family`). Helpers
a technique may call on torch models live beside it and are imported from their modules (they
import torch):
:mod:`optimizer.plugin_api.training` (``train_epochs``, ``torch_accuracy``) and
:mod:`optimizer.plugin_api.model_stats` (``count_params``, ``count_macs``, ``example_input``,
``iter_batches``, ``model_device``). :mod:`optimizer.plugin_testing` checks a plugin against
the contract. Nothing else under ``optimizer`` is API: it moves without notice.

Importing this package is cheap (no torch, no timm): the driver imports it before it knows
whether it will train anything.
"""

from .data_source import DataSource, DataSourceBase, Splits
from .family import ChannelGroup, HeadSlices, ModelFamily, ModelFamilyBase, Prunable
from .hookspecs import ENTRY_POINT_GROUP, PROJECT, hookimpl
from .task import DEFAULT_METRIC, SCORE, Task, TaskBase, onnx_rows, scores_outputs
from .technique import (
    STAGES,
    CalibrationMethod,
    OnnxArtifact,
    ParamSpec,
    Precision,
    Stage,
    StageContext,
    Technique,
    TrialPruned,
)

__all__ = [
    "DEFAULT_METRIC",
    "ENTRY_POINT_GROUP",
    "PROJECT",
    "SCORE",
    "STAGES",
    "CalibrationMethod",
    "ChannelGroup",
    "DataSource",
    "DataSourceBase",
    "HeadSlices",
    "ModelFamily",
    "ModelFamilyBase",
    "OnnxArtifact",
    "ParamSpec",
    "Precision",
    "Prunable",
    "Splits",
    "Stage",
    "StageContext",
    "Task",
    "TaskBase",
    "Technique",
    "TrialPruned",
    "hookimpl",
    "onnx_rows",
    "scores_outputs",
]
