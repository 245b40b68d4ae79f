"""HTTP/JSON API v1 of the agent (standard library ``http.server``; see ``openapi.py``).

Request handling stays thin: authenticate, bound and parse the request, hand it to
:class:`~jetson_agent.agent.Agent`, answer JSON. Every error is a JSON body
``{"error": {"code": ..., "message": ...}}`` with a fitting status; nothing received is
unpickled, and no request value ever becomes a path on disk.
"""

import hmac
import json
import logging
import math
import re
import socketserver
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlsplit

from . import __version__, multipart, npy
from .cache import is_sha256
from .errors import SpecError
from .evaluation import evaluation_spec
from .openapi import openapi_document
from .spec import MAX_WAIT_S, MeasureSpec

log = logging.getLogger("jetson_agent")

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_DECIMAL = re.compile(r"^[0-9]{1,18}$")
DRAIN_LIMIT_BYTES = 16 * 1024 * 1024


# method -> (path pattern, handler method, public: no token needed); one table for dispatch and
# for the Allow header of a 405.
_ROUTES = {
    "GET": (
        (r"^/v1/openapi\.json$", "_openapi", True),
        (r"^/v1/info$", "_info", False),
        (r"^/v1/jobs/([^/]*)$", "_job", False),
        (r"^/v1/jobs/([^/]*)/outputs/([^/]*)$", "_job_output", False),
    ),
    "POST": (
        (r"^/v1/jobs$", "_submit", False),
        (r"^/v1/evaluations$", "_submit_evaluation", False),
        (r"^/v1/models$", "_upload_model", False),
    ),
    "HEAD": ((r"^/v1/models/([^/]*)$", "_has_model", False),),
}
_CODE = re.compile(r"[^a-z0-9]+")


class HttpError(Exception):
    def __init__(self, status, code, message, headers=None):
        super(HttpError, self).__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class AgentHTTPServer(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, agent, token=None, max_upload_bytes=256 * 1024 * 1024):
        self.agent = agent
        self.token = token
        self.max_upload_bytes = max_upload_bytes
        HTTPServer.__init__(self, address, AgentHandler)


class AgentHandler(BaseHTTPRequestHandler):
    server_version = "jetson-agent/" + __version__
    timeout = 120  # a stalled client cannot hold a thread forever
    # A request line too malformed to name its version is answered with a status line and
    # headers, not as HTTP/0.9 (a bare body).
    default_request_version = "HTTP/1.0"

    # -- plumbing --------------------------------------------------------------------------
    def log_message(self, format, *args):
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status, payload=None, headers=None, raw=None):
        """Answer ``payload`` as JSON, or ``raw`` bytes as application/octet-stream."""
        if raw is not None:
            body, ctype = raw, "application/octet-stream"
        else:
            body = b"" if payload is None else json.dumps(payload).encode("utf-8")
            ctype = "application/json"
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up: nobody to tell
            self.close_connection = True
            log.info("%s went away before the %d answer", self.address_string(), status)

    def send_error(self, code, message=None, explain=None):
        """What ``http.server`` itself refuses (a malformed request line, oversized headers, an
        unknown method) answered as JSON like every other error, not as an HTML page."""
        try:
            short = self.responses[code][0]
        except (KeyError, TypeError):
            short = "error"
        self.close_connection = True
        self._send(
            code,
            {"error": {"code": _CODE.sub("_", short.lower()), "message": message or short}},
            {"Connection": "close"},
        )

    def _not_allowed(self):
        """404 for a path the API lacks; 405, with Allow, for a method it lacks there."""
        path = urlsplit(self.path).path
        allowed = sorted(
            method
            for method, routes in _ROUTES.items()
            if any(re.match(pattern, path) for pattern, _name, _public in routes)
        )
        if not allowed:
            raise HttpError(
                404, "not_found", "no such endpoint: %s %s" % (self.command, path[:200])
            )
        raise HttpError(
            405,
            "method_not_allowed",
            "%s is not allowed on %s (allowed: %s)"
            % (self.command, path[:200], ", ".join(allowed)),
            {"Allow": ", ".join(allowed)},
        )

    def _send_error(self, exc):
        self._send(exc.status, {"error": {"code": exc.code, "message": exc.message}}, exc.headers)

    def _dispatch(self):
        try:
            path = urlsplit(self.path).path
            for pattern, name, public in _ROUTES.get(self.command, ()):
                match = re.match(pattern, path)
                if match:
                    if not public:
                        self._authenticate()
                    getattr(self, name)(*match.groups())
                    return
            self._not_allowed()
        except HttpError as exc:
            self._send_error(exc)
        except Exception as exc:  # a bug in one request must not take the agent down
            log.exception("request failed")
            self._send(500, {"error": {"code": "internal", "message": str(exc)}})

    def _authenticate(self):
        token = self.server.token
        if token is None:
            return
        header = self.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
            raise HttpError(
                401,
                "unauthorized",
                "missing or wrong bearer token",
                {"WWW-Authenticate": 'Bearer realm="jetson-agent"'},
            )

    def _read_body(self):
        """The request body, exactly Content-Length bytes. The length must be one plain decimal
        number (``-1`` would read to the end of the stream, past the upload cap); chunked
        bodies are refused (411), and so is a body that ends early."""
        if self.headers.get("Transfer-Encoding") is not None:
            self.close_connection = True
            raise HttpError(
                411, "length_required", "chunked bodies are not accepted: send a Content-Length"
            )
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            raise HttpError(411, "length_required", "send a Content-Length header")
        if len(set(lengths)) > 1 or not _DECIMAL.match(lengths[0]):
            self.close_connection = True
            raise HttpError(
                400, "bad_request", "Content-Length must be one non-negative decimal number"
            )
        length = int(lengths[0])
        if length > self.server.max_upload_bytes:
            self._discard(length)
            self.close_connection = True
            raise HttpError(
                413,
                "payload_too_large",
                "upload of %d bytes exceeds the agent's limit of %d bytes (--max-upload-mb)"
                % (length, self.server.max_upload_bytes),
                {"Connection": "close"},
            )
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            raise HttpError(
                400,
                "bad_request",
                "the body ended after %d of its %d bytes (Content-Length)" % (len(body), length),
            )
        return body

    def _discard(self, length):
        """Read (and drop) a modest refused body so the client can read our 413 instead of a
        reset connection; larger bodies are cut off by closing the connection."""
        remaining = length if length <= DRAIN_LIMIT_BYTES else 0
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                break
            remaining -= len(chunk)

    # -- routes ----------------------------------------------------------------------------
    def __getattr__(self, name):
        """``do_<METHOD>`` for every method, known or not: all go through the route table, so
        one the API lacks is answered 405 with Allow (or 404), never http.server's 501."""
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def _openapi(self):
        self._send(200, openapi_document())

    def _info(self):
        info = self.server.agent.info()
        info["limits"]["max_upload_bytes"] = self.server.max_upload_bytes
        info["auth"] = self.server.token is not None
        self._send(200, info)

    def _has_model(self, sha):
        if not is_sha256(sha):
            raise HttpError(400, "bad_request", "a model id is a lowercase sha256 hex digest")
        if not self.server.agent.cache.has_model(sha):
            raise HttpError(404, "unknown_model", "no model with that sha256")
        self._send(200)

    def _upload_model(self):
        """Store a model without measuring it (a paired job's reference)."""
        body = self._read_body()
        if not body:
            raise HttpError(400, "bad_request", "the body must be the model's bytes")
        sha = self.server.agent.cache.put_model(body)
        self._send(201, {"model_sha256": sha}, {"Location": "/v1/models/" + sha})

    def _known_job(self, job_id):
        if not _JOB_ID.match(job_id):
            raise HttpError(404, "unknown_job", "no job with id %r" % job_id[:80])
        job, position = self.server.agent.get(job_id)
        if job is None:
            raise HttpError(404, "unknown_job", "no job with id %s" % job_id)
        return job, position

    def _job(self, job_id):
        job, position = self._known_job(job_id)
        wait = parse_qs(urlsplit(self.path).query, keep_blank_values=True).get("wait")
        if wait is not None:
            try:
                seconds = float(wait[0]) if len(wait) == 1 else float("nan")
            except ValueError:
                seconds = float("nan")
            if math.isnan(seconds):
                raise HttpError(400, "bad_request", "wait must be one number of seconds")
            seconds = min(max(seconds, 0.0), MAX_WAIT_S)
            job.done.wait(seconds)
            job, position = self.server.agent.get(job_id)
        self._send(200, job.to_dict(position))

    def _job_output(self, job_id, index):
        """Output ``index`` of a finished evaluation job, as an ``.npy`` file."""
        job, _position = self._known_job(job_id)
        if job.kind != "evaluate":
            raise HttpError(
                404, "no_outputs", "job %s is a measurement: it has no outputs" % job_id
            )
        if job.state != "done":
            raise HttpError(409, "not_done", "job %s is %s: wait for it" % (job_id, job.state))
        if job.result.get("status") != "ok":
            raise HttpError(
                409,
                "job_failed",
                "job %s failed (%s): %s"
                % (job_id, job.result.get("status"), job.result.get("message")),
            )
        if not (_DECIMAL.match(index) and int(index) < len(job.outputs)):
            raise HttpError(
                404,
                "unknown_output",
                "no output %r: job %s has outputs 0 to %d"
                % (index[:20], job_id, len(job.outputs) - 1),
            )
        self._send(200, raw=job.outputs[int(index)])

    def _submit_evaluation(self):
        ctype = self.headers.get("Content-Type", "")
        body = self._read_body()  # first, as for jobs: the connection stays usable
        if not ctype.startswith("multipart/form-data"):
            raise HttpError(
                415, "unsupported_media_type", "send multipart/form-data: spec, model, inputs"
            )
        fields = self._fields(body, ctype, ("spec", "model", "inputs"), "an evaluation")
        try:
            inputs = npy.parse(fields["inputs"])
        except npy.NpyError as exc:
            raise HttpError(400, "bad_inputs", "inputs: %s" % exc) from exc
        asked = self._json(fields["spec"], "the spec field")
        agent = self.server.agent
        sha = agent.cache.put_model(fields["model"])
        try:
            spec = evaluation_spec(asked, inputs, agent.model_inputs(sha))
        except SpecError as exc:
            raise HttpError(400, "bad_spec", str(exc)) from exc
        problem = agent.evaluation_problem(sha, spec, inputs)
        if problem is not None:
            code, message = problem
            raise HttpError(501 if code == "evaluation_unsupported" else 422, code, message)
        job = agent.submit(sha, spec, inputs=fields["inputs"])
        self._send(
            202,
            {"job_id": job.id, "kind": job.kind, "state": job.state, "model_sha256": sha},
            {"Location": "/v1/jobs/" + job.id},
        )

    def _submit(self):
        ctype = self.headers.get("Content-Type", "")
        body = self._read_body()
        agent = self.server.agent
        if ctype.startswith("multipart/form-data"):
            fields = self._fields(body, ctype, ("spec", "model"), "a multipart job")
            spec = self._spec(self._json(fields["spec"], "the spec field"))
            sha = agent.cache.put_model(fields["model"])
        elif ctype.startswith("application/json"):
            payload = self._json(body, "the request body")
            if not isinstance(payload, dict):
                raise HttpError(400, "bad_request", "the request body must be a JSON object")
            sha = payload.get("model_sha256")
            if not isinstance(sha, str) or not is_sha256(sha):
                raise HttpError(400, "bad_request", "model_sha256 must be a sha256 hex digest")
            spec = self._spec(payload.get("spec", {}))
            if not agent.cache.has_model(sha):
                raise HttpError(404, "unknown_model", "no model with that sha256: upload it")
        else:
            raise HttpError(
                415,
                "unsupported_media_type",
                "send multipart/form-data (spec + model) or application/json (spec + model_sha256)",
            )
        problem = agent.submission_problem(sha, spec)
        if problem is not None:  # a valid request that does not fit the models it names
            code, message = problem
            raise HttpError(404 if code == "unknown_reference" else 422, code, message)
        job = agent.submit(sha, spec)
        self._send(
            202,
            {"job_id": job.id, "state": job.state, "model_sha256": sha},
            {"Location": "/v1/jobs/" + job.id},
        )

    @staticmethod
    def _fields(body, ctype, names, what):
        """The parts of a multipart body, which must be exactly ``names``; ``what`` names the
        request in the message (``a multipart job``)."""
        try:
            fields = multipart.parse(body, multipart.boundary_of(ctype))
        except multipart.MultipartError as exc:
            raise HttpError(400, "bad_request", str(exc)) from exc
        if sorted(fields) != sorted(names):
            listed = ["'%s'" % name for name in names]
            raise HttpError(
                400,
                "bad_request",
                "%s has exactly the fields %s and %s (got %s)"
                % (
                    what,
                    ", ".join(listed[:-1]),
                    listed[-1],
                    ", ".join(repr(name[:40]) for name in sorted(fields)),
                ),
            )
        return fields

    @staticmethod
    def _json(raw, what):
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise HttpError(400, "bad_json", "%s is not valid JSON: %s" % (what, exc)) from exc
        except RecursionError:  # the parser recurses per nesting level
            raise HttpError(400, "bad_json", "%s is nested too deeply" % what) from None

    @staticmethod
    def _spec(data):
        try:
            return MeasureSpec.from_dict(data)
        except SpecError as exc:
            raise HttpError(400, "bad_spec", str(exc)) from exc
