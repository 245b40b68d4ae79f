"""The technique contract, at the import path plugins written before :mod:`optimizer.plugin_api`
use; new code imports :mod:`optimizer.plugin_api`."""

from optimizer.plugin_api.technique import *  # noqa: F403
from optimizer.plugin_api.technique import __all__  # noqa: F401
