"""The built-in model families (see :mod:`optimizer.plugin_api.family`): one module each, each
registered here. A rule a family does not have (heads of a single-head attention, a model
name no family covers) is refused with one line naming the model."""

from __future__ import annotations

from typing import Any

from optimizer.plugin_api import hookimpl

from .efficientformer import EFFICIENTFORMER
from .levit import LEVIT
from .mobilevit import MOBILEVIT
from .swin import SWIN
from .vit import VIT

FAMILIES = (VIT, SWIN, MOBILEVIT, EFFICIENTFORMER, LEVIT)


@hookimpl
def vitopt_register_model_families() -> dict[str, Any]:
    return {family.name: family for family in FAMILIES}
