"""The hooks, at the import path plugins written before :mod:`optimizer.plugin_api` use; new
code imports :mod:`optimizer.plugin_api`."""

from optimizer.plugin_api.hookspecs import *  # noqa: F403
from optimizer.plugin_api.hookspecs import __all__  # noqa: F401
