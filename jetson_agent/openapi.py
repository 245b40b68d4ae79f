"""The OpenAPI 3.0 description of API v1, served at ``/v1/openapi.json``."""

from . import __version__
from .errors import STATUSES
from .spec import (
    DEFAULT_PAIRED_BLOCK_ITERATIONS,
    DEFAULT_PAIRED_MAX_TIME_S,
    DEFAULT_PAIRED_MIN_REPEAT_MS,
    DEFAULT_PAIRED_ROUNDS,
    DEFAULT_RATIO_CI,
    MAX_BATCH,
    MAX_DIM,
    MAX_DURATION_S,
    MAX_ITERATIONS,
    MAX_REPEAT_MS,
    MAX_REPEATS,
    MAX_ROUNDS,
    MAX_TIMEOUT_S,
    MAX_WAIT_S,
    PRECISIONS,
)

_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_JOB_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
_SHAPE = {
    "type": "array",
    "minItems": 1,
    "items": {"type": "integer", "minimum": 1, "maximum": MAX_DIM},
}

_ERROR = {
    "description": "error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _json_response(description, ref):
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/" + ref}}},
    }


_TYPES = {"iterations": "integer", "duration_s": "number", "reference": "object"}


def _given(*fields):
    """Matches a spec in which each of ``fields`` is given (present, not null)."""
    return {
        "required": list(fields),
        "properties": dict((field, {"type": _TYPES[field]}) for field in fields),
    }


_BINARY = {"type": "string", "format": "binary"}


def _multipart(**fields):
    """A multipart/form-data body of exactly ``fields`` (name: schema, all required, in this
    order), its ``spec`` part JSON."""
    return {
        "schema": {
            "type": "object",
            "additionalProperties": False,
            "required": list(fields),
            "properties": fields,
        },
        "encoding": {"spec": {"contentType": "application/json"}},
    }


def _timeout(phase):
    return {
        "type": "number",
        "nullable": True,
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": MAX_TIMEOUT_S,
        "description": "seconds the %s phase may take, capped by the agent's own limit" % phase,
    }


def openapi_document():
    spec_schema = {
        "type": "object",
        "additionalProperties": False,
        "description": "null for a field is the same as leaving it out (a job's spec is "
        "answered with nulls for what it left out). Not iterations with duration_s, nor "
        "duration_s in a paired job (one with a reference); ratio_ci and max_time_s only in one, "
        "and repeats past %d only in one" % MAX_REPEATS,
        "allOf": [
            {"not": _given("iterations", "duration_s")},
            {"not": _given("reference", "duration_s")},
            {
                "anyOf": [
                    _given("reference"),
                    {
                        "properties": {
                            "ratio_ci": {"nullable": True, "enum": [None]},
                            "max_time_s": {"nullable": True, "enum": [None]},
                            "repeats": {"nullable": True, "maximum": MAX_REPEATS},
                        }
                    },
                ]
            },
        ],
        "properties": {
            "precision": {"type": "string", "enum": list(PRECISIONS), "default": "fp32"},
            "batch_size": {"type": "integer", "minimum": 1, "maximum": MAX_BATCH, "default": 1},
            "input_shape": dict(
                _SHAPE,
                nullable=True,
                description="full shape of the first input (batch included); it must have "
                "the input's rank and agree with its fixed dims (else 422 input_mismatch)",
            ),
            "input_shapes": {
                "type": "object",
                "additionalProperties": _SHAPE,
                "description": "shapes by input name, each as input_shape",
            },
            "warmup": {"type": "integer", "minimum": 0, "maximum": MAX_ITERATIONS, "default": 10},
            "iterations": {
                "nullable": True,
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_ITERATIONS,
                "description": "timed iterations per repeat (default 100, unless duration_s is "
                "given); in a paired job the least iterations of a block (default %d)"
                % DEFAULT_PAIRED_BLOCK_ITERATIONS,
            },
            "duration_s": {
                "nullable": True,
                "type": "number",
                "minimum": 0,
                "exclusiveMinimum": True,
                "maximum": MAX_DURATION_S,
                "description": "time each repeat for this long instead of a number of "
                "iterations; not with iterations, nor in a paired job",
            },
            "repeats": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_ROUNDS,
                "description": "timed runs (default 3, at most %d); in a paired job the least "
                "number of rounds (default %d, at most %d)"
                % (MAX_REPEATS, DEFAULT_PAIRED_ROUNDS, MAX_ROUNDS),
            },
            "cv_threshold": {
                "type": "number",
                "minimum": 0,
                "exclusiveMinimum": True,
                "maximum": 10,
                "default": 0.05,
                "description": "an unpaired job re-measures once when its CV is above this",
            },
            "reference": {
                "nullable": True,
                "type": "object",
                "additionalProperties": False,
                "required": ["model_sha256"],
                "description": "makes the job paired: this model (one the agent holds, fed the "
                "same inputs as the candidate) is timed in blocks alternating with the "
                "candidate's, in one process, and the result carries their speedup with an "
                "interval (Result.paired). Unknown: 404 unknown_reference; other inputs: 422 "
                "reference_mismatch",
                "properties": {
                    "model_sha256": _SHA256,
                    "precision": {"type": "string", "enum": list(PRECISIONS), "default": "fp32"},
                },
            },
            "min_repeat_ms": {
                "type": "number",
                "minimum": 0,
                "maximum": MAX_REPEAT_MS,
                "description": "the least milliseconds a block (paired, default %g) or a repeat "
                "in iteration mode (unpaired, default 0: off) lasts; iterations are added, sized "
                "from a calibration run after the warm-up. 0 turns it off"
                % DEFAULT_PAIRED_MIN_REPEAT_MS,
            },
            "ratio_ci": {
                "nullable": True,
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "description": "paired jobs only (default %g): rounds go on, after repeats, until "
                "the 95 %% interval's half-width is within this fraction of the speedup, or "
                "max_time_s; 0: exactly repeats rounds" % DEFAULT_RATIO_CI,
            },
            "max_time_s": {
                "nullable": True,
                "type": "number",
                "minimum": 0,
                "exclusiveMinimum": True,
                "maximum": MAX_DURATION_S,
                "description": "paired jobs only (default %g): the time cap of the rounds "
                "towards ratio_ci (the run timeout still applies)" % DEFAULT_PAIRED_MAX_TIME_S,
            },
            "build_timeout_s": _timeout("build"),
            "run_timeout_s": _timeout("run"),
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
    paired = {
        "type": "object",
        "description": "a paired job's timing: the candidate's blocks are the result's "
        "samples_ms, the reference's are here; speedup = median over rounds of median(reference "
        "block) / median(candidate block), with the distribution-free order-statistics interval "
        "of that median, re-derivable from the samples",
        "properties": {
            "reference": {
                "type": "object",
                "properties": {
                    "model_sha256": _SHA256,
                    "precision": {"type": "string", "enum": list(PRECISIONS)},
                    "latency_ms": {"$ref": "#/components/schemas/Stats"},
                    "samples_ms": {
                        "type": "array",
                        "description": "one list per block (round)",
                        "items": {"type": "array", "items": {"type": "number"}},
                    },
                    "build": {"type": "object"},
                },
            },
            "rounds": {"type": "integer"},
            "block_iterations": {
                "type": "object",
                "properties": {
                    "candidate": {"type": "integer"},
                    "reference": {"type": "integer"},
                },
            },
            "interval_method": {"type": "string"},
            "target_halfwidth": {"type": "number", "description": "the spec's ratio_ci"},
            "target_met": {"type": "boolean"},
            "stopped_by": {"type": "string", "enum": ["target", "time_cap", "rounds"]},
            "timed_s": {"type": "number", "description": "seconds of rounds"},
            "blocks": {
                "type": "array",
                "description": "the timeline, in order (epoch seconds)",
                "items": {
                    "type": "object",
                    "properties": {
                        "round": {"type": "integer"},
                        "model": {"type": "string", "enum": ["candidate", "reference"]},
                        "started_at": {"type": "number"},
                        "ended_at": {"type": "number"},
                        "count": {"type": "integer"},
                    },
                },
            },
            "speedup": {"type": "number", "description": "> 1: the candidate is faster"},
            "speedup_ci": {
                "type": "array",
                "items": {"type": "number"},
                "minItems": 2,
                "maxItems": 2,
            },
            "confidence": {
                "type": "number",
                "description": "the interval's exact coverage (>= 0.95 from 6 rounds on)",
            },
            "halfwidth": {
                "type": "number",
                "description": "(high - low) / 2 / speedup, compared with target_halfwidth",
            },
            "round_ratios": {"type": "array", "items": {"type": "number"}},
        },
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
                "Paired": paired,
                "StoredModel": {
                    "type": "object",
                    "properties": {"model_sha256": _SHA256},
                },
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
                        "remeasure_reason": {"type": "string", "nullable": True},
                        "other_attempt": {"type": "object", "nullable": True},
                        "stable": {
                            "type": "boolean",
                            "description": "unpaired: CV within cv_threshold; paired: target_met",
                        },
                        "paired": {"$ref": "#/components/schemas/Paired"},
                        "quiet_lock_wait_s": {
                            "type": "number",
                            "nullable": True,
                            "description": "seconds the run phase waited for co-located steps "
                            "(agent started with --quiet-lock), else null",
                        },
                        "build": {"type": "object"},
                        "cache": {"type": "object"},
                        "peak_memory_mb": {"type": "number"},
                        "power": {"type": "object", "nullable": True},
                        "telemetry": {"type": "object"},
                        "backend": {"type": "object"},
                        "device": {"type": "string"},
                        "device_type": {"type": "string"},
                        "inferences": {
                            "type": "integer",
                            "description": "an evaluation: the rows of its inputs it ran",
                        },
                        "outputs": {
                            "type": "array",
                            "description": "an evaluation: each output (GET "
                            "/v1/jobs/{job_id}/outputs/{index}), the rows stacked",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "index": {"type": "integer"},
                                    "shape": {"type": "array", "items": {"type": "integer"}},
                                    "dtype": {"type": "string"},
                                },
                            },
                        },
                    },
                },
                "Job": {
                    "type": "object",
                    "properties": {
                        "job_id": {"type": "string"},
                        "kind": {"type": "string", "enum": ["measure", "evaluate"]},
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
                    "operationId": "getInfo",
                    "summary": "Device, backend, supported precisions, power mode, clocks, "
                    "temperatures, queue length, limits",
                    "responses": {"200": {"description": "agent and device facts"}, "401": _ERROR},
                }
            },
            "/v1/jobs": {
                "post": {
                    "operationId": "submitJob",
                    "summary": "Queue a measurement",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": _multipart(
                                spec={"$ref": "#/components/schemas/Spec"}, model=_BINARY
                            ),
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["model_sha256"],
                                    "properties": {
                                        "model_sha256": _SHA256,
                                        "spec": {"$ref": "#/components/schemas/Spec"},
                                    },
                                }
                            },
                        },
                    },
                    "responses": {
                        "202": dict(
                            _json_response("queued (or answered from cache)", "Job"),
                            links={
                                "GetJob": {
                                    "operationId": "getJob",
                                    "parameters": {"job_id": "$response.body#/job_id"},
                                }
                            },
                        ),
                        "400": dict(
                            _ERROR,
                            description="bad_request (a malformed body or Content-Length), "
                            "bad_json, or bad_spec: what this document rules out (a field out of "
                            "range, an unknown field, fields that exclude each other)",
                        ),
                        "422": dict(
                            _ERROR,
                            description="a valid request that does not fit the models it names: "
                            "input_mismatch (shapes of another rank than the model's inputs, or "
                            "disagreeing with their fixed dims; input_shapes naming no input; an "
                            "input element type the agent cannot feed) or reference_mismatch (the "
                            "reference is fed other inputs than the candidate)",
                        ),
                        "401": _ERROR,
                        "404": dict(
                            _ERROR,
                            description="unknown_model (model_sha256 not held: send the model) "
                            "or unknown_reference (spec.reference not held: POST /v1/models)",
                        ),
                        "411": dict(_ERROR, description="no Content-Length, or a chunked body"),
                        "413": dict(_ERROR, description="payload_too_large (--max-upload-mb)"),
                        "415": _ERROR,
                    },
                }
            },
            "/v1/evaluations": {
                "post": {
                    "operationId": "submitEvaluation",
                    "summary": "Queue an evaluation: the model run on the inputs sent, built as "
                    "a timing job of the same precision would build it; its outputs are then "
                    "GET /v1/jobs/{job_id}/outputs/{index}",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": _multipart(
                                spec={
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "precision": {"type": "string", "enum": list(PRECISIONS)},
                                        "build_timeout_s": _timeout("build"),
                                        "run_timeout_s": _timeout("run"),
                                    },
                                },
                                model=_BINARY,
                                inputs=dict(
                                    _BINARY,
                                    description="an .npy file (never a pickle): rows of the "
                                    "model's one input, each fed with a batch of 1; "
                                    "little-endian numeric dtype, C order",
                                ),
                            )
                        },
                    },
                    "responses": {
                        "202": _json_response("queued", "Job"),
                        "400": dict(
                            _ERROR,
                            description="bad_request (a malformed body), bad_json, bad_spec, "
                            "or bad_inputs: not an .npy file of a plain numeric array (object "
                            "arrays, i.e. pickles, are refused), truncated, or of a dtype the "
                            "agent does not feed",
                        ),
                        "401": _ERROR,
                        "411": dict(_ERROR, description="no Content-Length, or a chunked body"),
                        "413": dict(_ERROR, description="payload_too_large (--max-upload-mb)"),
                        "415": _ERROR,
                        "422": dict(
                            _ERROR,
                            description="input_mismatch: the inputs are not rows of the model's "
                            "one input (element type, rank, fixed dims), or the model has "
                            "several inputs",
                        ),
                        "501": dict(
                            _ERROR,
                            description="evaluation_unsupported: this agent's backend times "
                            "models but does not evaluate them (GET /v1/info: evaluates)",
                        ),
                    },
                }
            },
            "/v1/models": {
                "post": {
                    "operationId": "storeModel",
                    "summary": "Store a model without measuring it (a paired job's reference)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary", "minLength": 1}
                            }
                        },
                    },
                    "responses": {
                        "201": {
                            "description": "stored (or already held); Location: "
                            "/v1/models/{sha256}",
                            "headers": {"Location": {"schema": {"type": "string"}}},
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/StoredModel"}
                                }
                            },
                        },
                        "400": dict(_ERROR, description="bad_request: an empty or short body"),
                        "401": _ERROR,
                        "411": dict(_ERROR, description="no Content-Length, or a chunked body"),
                        "413": dict(_ERROR, description="payload_too_large (--max-upload-mb)"),
                    },
                }
            },
            "/v1/jobs/{job_id}": {
                "get": {
                    "operationId": "getJob",
                    "summary": "A job's state and, when done, its result",
                    "parameters": [
                        {"name": "job_id", "in": "path", "required": True, "schema": _JOB_ID},
                        {
                            "name": "wait",
                            "in": "query",
                            "schema": {"type": "number"},
                            "description": "long-poll: wait up to this many seconds (clamped to "
                            "0..%g) for the job to finish; not a number: 400" % MAX_WAIT_S,
                        },
                    ],
                    "responses": {
                        "200": _json_response("the job", "Job"),
                        "400": dict(_ERROR, description="wait is not a number"),
                        "401": _ERROR,
                        "404": dict(_ERROR, description="unknown_job: never held, or forgotten"),
                    },
                }
            },
            "/v1/jobs/{job_id}/outputs/{index}": {
                "get": {
                    "operationId": "getJobOutput",
                    "summary": "An output of a finished evaluation, as an .npy file",
                    "parameters": [
                        {"name": "job_id", "in": "path", "required": True, "schema": _JOB_ID},
                        {
                            "name": "index",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "the output, rows stacked (.npy)",
                            "content": {
                                "application/octet-stream": {
                                    "schema": {"type": "string", "format": "binary"}
                                }
                            },
                        },
                        "401": _ERROR,
                        "404": dict(
                            _ERROR,
                            description="unknown_job, no_outputs (a measurement), or "
                            "unknown_output (no such index)",
                        ),
                        "409": dict(
                            _ERROR,
                            description="not_done (wait for the job) or job_failed (its result "
                            "says why)",
                        ),
                    },
                }
            },
            "/v1/models/{sha256}": {
                "head": {
                    "operationId": "hasModel",
                    "summary": "Whether the agent already holds this model (skip the upload)",
                    "parameters": [
                        {"name": "sha256", "in": "path", "required": True, "schema": _SHA256}
                    ],
                    "responses": {
                        "200": {"description": "present"},
                        "400": {"description": "not a lowercase sha256 hex digest"},
                        "401": {"description": "missing or wrong bearer token"},
                        "404": {"description": "absent"},
                    },
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "operationId": "getOpenAPI",
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": {"description": "OpenAPI 3.0 document"}},
                }
            },
        },
    }
