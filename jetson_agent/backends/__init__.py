"""Backend lookup: the built-in names, ``auto``, or ``package.module:Class`` for a site's own."""

import importlib

_BUILTIN = (
    ("tensorrt", "jetson_agent.backends.tensorrt_backend:TensorRTBackend"),
    ("trtexec", "jetson_agent.backends.trtexec:TrtexecBackend"),
    ("onnxruntime", "jetson_agent.backends.onnxruntime_backend:OnnxRuntimeBackend"),
)
BUILTIN_NAMES = tuple(name for name, _ in _BUILTIN)


def _import(target):
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError("cannot load backend %r: %s" % (target, exc)) from exc


def resolve_backend(name):
    """Return ``(name, target)`` for ``name``; ``auto`` picks the first built-in backend whose
    runtime is installed, in the order tensorrt → trtexec → onnxruntime (fastest path first)."""
    if name == "auto":
        for builtin, target in _BUILTIN:
            if _import(target).available():
                return builtin, target
        raise ValueError("no backend is available: install onnxruntime, TensorRT or trtexec")
    for builtin, target in _BUILTIN:
        if name == builtin:
            if not _import(target).available():
                raise ValueError("backend %r is not installed on this device" % name)
            return builtin, target
    if ":" in name:
        _import(name)
        return name, name
    raise ValueError(
        "unknown backend %r; choose auto, %s or module:Class" % (name, ", ".join(BUILTIN_NAMES))
    )


def load_backend_class(target):
    return _import(target)
