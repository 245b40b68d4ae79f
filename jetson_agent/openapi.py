"""The OpenAPI 3.0 description of API v1, served at ``/v1/openapi.json``."""

from . import __version__
from .errors import STATUSES
from .spec import MAX_DURATION_S, MAX_ITERATIONS, MAX_REPEATS, PRECISIONS

_ERROR = {
    "description": "error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _json_response(description, ref):
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/" + ref}}},
    }


def openapi_document():
    spec_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "precision": {"type": "string", "enum": list(PRECISIONS), "default": "fp32"},
            "batch_size": {"type": "integer", "minimum": 1, "default": 1},
            "input_shape": {
                "type": "array",
                "items": {"type": "integer", "minimum": 1},
                "description": "full shape of the first input (batch included)",
            },
            "input_shapes": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"type": "integer"}},
            },
            "warmup": {"type": "integer", "minimum": 0, "default": 10},
            "iterations": {"type": "integer", "minimum": 1, "maximum": MAX_ITERATIONS},
            "duration_s": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_DURATION_S},
            "repeats": {"type": "integer", "minimum": 1, "maximum": MAX_REPEATS, "default": 3},
            "cv_threshold": {"type": "number", "default": 0.05},
            "build_timeout_s": {"type": "number", "description": "capped by the agent's own"},
            "run_timeout_s": {"type": "number", "description": "capped by the agent's own"},
            "use_cache": {
                "type": "boolean",
                "default": True,
                "description": "false re-measures even when a result is cached",
            },
        },
    }
    stats = {
        "type": "object",
        "properties": dict(
            (name, {"type": "number"})
            for name in ("count", "mean", "std", "cv", "min", "max", "p50", "p90", "p99")
        ),
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "vitopt device agent",
            "version": __version__,
            "description": "Measures ONNX models on the device it runs on. One job measures at "
            "a time, first in first out. Send `Authorization: Bearer <token>` when the agent "
            "was started with --token-file.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        }
                    },
                },
                "Spec": spec_schema,
                "Stats": stats,
                "Result": {
                    "type": "object",
                    "properties": {
                        "status": {"type": "string", "enum": list(STATUSES)},
                        "message": {"type": "string"},
                        "latency_ms": {"$ref": "#/components/schemas/Stats"},
                        "repeats": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Stats"},
                        },
                        "samples_ms": {
                            "type": "array",
                            "items": {"type": "array", "items": {"type": "number"}},
                        },
                        "remeasured": {"type": "boolean"},
                        "other_attempt": {"type": "object", "nullable": True},
                        "build": {"type": "object"},
                        "cache": {"type": "object"},
                        "peak_memory_mb": {"type": "number"},
                        "power": {"type": "object", "nullable": True},
                        "telemetry": {"type": "object"},
                        "backend": {"type": "object"},
                        "device": {"type": "string"},
                        "device_type": {"type": "string"},
                    },
                },
                "Job": {
                    "type": "object",
                    "properties": {
                        "job_id": {"type": "string"},
                        "state": {"type": "string", "enum": ["queued", "running", "done"]},
                        "queue_position": {"type": "integer"},
                        "model_sha256": {"type": "string"},
                        "spec": {"$ref": "#/components/schemas/Spec"},
                        "created_at": {"type": "number"},
                        "started_at": {"type": "number", "nullable": True},
                        "finished_at": {"type": "number", "nullable": True},
                        "result": {"$ref": "#/components/schemas/Result"},
                    },
                },
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/info": {
                "get": {
                    "summary": "Device, backend, supported precisions, power mode, clocks, "
                    "temperatures, queue length",
                    "responses": {"200": {"description": "agent and device facts"}, "401": _ERROR},
                }
            },
            "/v1/jobs": {
                "post": {
                    "summary": "Queue a measurement",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["spec", "model"],
                                    "properties": {
                                        "spec": {"type": "string", "description": "JSON Spec"},
                                        "model": {"type": "string", "format": "binary"},
                                    },
                                }
                            },
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["model_sha256"],
                                    "properties": {
                                        "model_sha256": {"type": "string"},
                                        "spec": {"$ref": "#/components/schemas/Spec"},
                                    },
                                }
                            },
                        },
                    },
                    "responses": {
                        "202": _json_response("queued (or answered from cache)", "Job"),
                        "400": _ERROR,
                        "401": _ERROR,
                        "404": _ERROR,
                        "411": _ERROR,
                        "413": _ERROR,
                        "415": _ERROR,
                    },
                }
            },
            "/v1/jobs/{job_id}": {
                "get": {
                    "summary": "A job's state and, when done, its result",
                    "parameters": [
                        {
                            "name": "job_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "wait",
                            "in": "query",
                            "schema": {"type": "number", "maximum": 30},
                            "description": "long-poll: wait up to this many seconds for the job",
                        },
                    ],
                    "responses": {"200": _json_response("the job", "Job"), "404": _ERROR},
                }
            },
            "/v1/models/{sha256}": {
                "head": {
                    "summary": "Whether the agent already holds this model (skip the upload)",
                    "parameters": [
                        {
                            "name": "sha256",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {"description": "present"},
                        "404": {"description": "absent"},
                    },
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": {"description": "OpenAPI 3.0 document"}},
                }
            },
        },
    }
