"""Host-side client of the device agent's HTTP API v1 (see ``jetson_agent/server.py``).

Modelled on TVM's RPC tracker client: the device is scarce and remote, so every failure is
typed. :class:`MeasurementFailed` carries the agent's job status, and
:attr:`MeasurementFailed.candidate_fault` tells the search whether the *candidate* was bad
(invalid model, build failure, out of memory) or the *device* was (timeouts, infra errors,
an unreachable agent), which must never be scored as a bad candidate.
"""

from __future__ import annotations

import hashlib
import http
import http.client
import json
import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jetson_agent import multipart, npy
from jetson_agent.errors import CANDIDATE_FAULTS, INFRA_ERROR, OK

#: The environment variable the CLI and campaigns read the agent's bearer token from.
TOKEN_ENV = "VITOPT_AGENT_TOKEN"

JsonDict = dict[str, Any]
_AGENT_URL = re.compile(r"^https?://[^/\s?#]+/?$")


class AgentError(Exception):
    """Base of every error this client raises."""


class AgentUnreachable(AgentError):
    """The agent did not answer (connection refused, reset, timed out, 5xx) after retries."""


class AgentRequestError(AgentError):
    """The agent refused the request (4xx): the request, not the device, is wrong."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"agent answered {status} {code}: {message}")
        self.status = status
        self.code = code


class AgentAuthError(AgentRequestError):
    """401: the bearer token is missing or wrong."""


class BadAgentUrl(AgentError, ValueError):
    """Not an agent's address: agents speak HTTP(S) at ``http://HOST:PORT``."""


def check_agent_url(url: str) -> str:
    """``url`` when it is an agent's address (``http(s)://HOST[:PORT]``), else BadAgentUrl."""
    if not _AGENT_URL.match(url):
        raise BadAgentUrl(f"{url!r} is not an agent URL: give http://HOST:PORT (or https://)")
    return url


class MeasurementTimeout(AgentError):
    """The job did not finish within the client's time limit (it may still be queued)."""


class MeasurementFailed(AgentError):
    """The job ended without a measurement; ``status`` is the agent's typed outcome."""

    def __init__(self, result: JsonDict):
        self.result = result
        self.status: str = result.get("status", "infra_error")
        super().__init__(f"{self.status}: {result.get('message', '')}")

    @property
    def candidate_fault(self) -> bool:
        return self.status in CANDIDATE_FAULTS


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Reference:
    """The model a paired job times the candidate against, and the precision it runs at."""

    path: Path
    precision: str = "fp32"


class AgentClient:
    """Talks to one agent. Thread-safe: it holds no connection state between calls."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        request_timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        job_timeout_s: float = 3600.0,
    ):
        self.url = check_agent_url(url).rstrip("/")
        self.token = token
        self.request_timeout_s = request_timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.job_timeout_s = job_timeout_s

    # -- transport -------------------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        timeout_s: float | None = None,
        binary: bool = False,
    ) -> tuple[int, Any]:
        """``(status, answer)``: the JSON answer parsed (None when empty), or with ``binary``
        its bytes."""
        headers = {"Accept": "application/octet-stream" if binary else "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if content_type:
            headers["Content-Type"] = content_type
        attempt = 0
        while True:
            request = urllib.request.Request(
                self.url + path, data=body, method=method, headers=headers
            )
            try:
                with urllib.request.urlopen(
                    request, timeout=timeout_s or self.request_timeout_s
                ) as response:
                    raw = response.read()
                    if binary:
                        return response.status, raw
                    return response.status, json.loads(raw) if raw else None
            except urllib.error.HTTPError as exc:
                try:
                    raw = exc.read()
                except (http.client.HTTPException, OSError) as lost:
                    failure: Exception = lost  # the agent went away mid-answer
                else:
                    if exc.code < 500:
                        self._raise_for(exc.code, raw, method)
                        return exc.code, None  # HEAD 404 and friends
                    failure = exc
            # http.client.HTTPException: an answer cut short (IncompleteRead, BadStatusLine),
            # as when the agent is killed while it answers.
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                failure = exc
            attempt += 1
            if attempt > self.retries:
                raise AgentUnreachable(
                    f"agent at {self.url} did not answer {method} {path} after "
                    f"{self.retries + 1} tries: {_reason(failure)}"
                ) from failure
            time.sleep(self.backoff_s * 2 ** (attempt - 1))

    @staticmethod
    def _raise_for(status: int, raw: bytes, method: str) -> None:
        if method == "HEAD" and status == 404:
            return
        try:
            error = json.loads(raw)["error"]
            code, message = error["code"], error["message"]
        except (ValueError, KeyError, TypeError):  # no JSON error (a HEAD answer has no body)
            code = "http_error"
            message = raw[:200].decode("utf-8", "replace") or _phrase(status)
        if status == 401:
            raise AgentAuthError(
                status,
                code,
                f"{message}; give the agent's token (--token-file or ${TOKEN_ENV})",
            )
        raise AgentRequestError(status, code, message)

    # -- API -------------------------------------------------------------------------------
    def info(self) -> JsonDict:
        _, payload = self._request("GET", "/v1/info")
        assert payload is not None
        return payload

    def has_model(self, sha256: str) -> bool:
        status, _ = self._request("HEAD", f"/v1/models/{sha256}")
        return status == 200

    def upload_model(self, model_path: Path) -> str:
        """Store a model on the agent without measuring it (``POST /v1/models``)."""
        _, payload = self._request(
            "POST", "/v1/models", Path(model_path).read_bytes(), "application/octet-stream"
        )
        assert payload is not None
        return payload["model_sha256"]

    def ensure_model(self, model_path: Path) -> str:
        """The model's sha256, uploaded first when the agent does not hold it."""
        sha = sha256_file(model_path)
        return sha if self.has_model(sha) else self.upload_model(model_path)

    def submit(
        self, model_path: Path, spec: JsonDict, reference: Reference | None = None
    ) -> JsonDict:
        """Queue a job; uploads the model only when the agent does not hold it already. With a
        ``reference`` the job is paired: the reference is uploaded too when missing, and named
        in the spec; if the agent lost it meanwhile (evicted), it is uploaded once more."""
        if reference is None:
            return self._submit(model_path, spec)
        ref_spec = {
            "model_sha256": self.ensure_model(reference.path),
            "precision": reference.precision,
        }
        paired = dict(spec, reference=ref_spec)
        try:
            return self._submit(model_path, paired)
        except AgentRequestError as exc:
            if exc.code != "unknown_reference":
                raise
            self.upload_model(reference.path)
            return self._submit(model_path, paired)

    def evaluate(
        self,
        model_path: Path,
        precision: str,
        inputs: Any,
        on_update: Callable[[JsonDict], None] | None = None,
    ) -> list[Any]:
        """Run the model on the device on ``inputs`` (a numpy array: rows of its one input,
        each fed with a batch of 1), built at ``precision`` as a timing job would build it;
        returns each output (numpy, the rows stacked). :class:`MeasurementFailed` when the job
        fails; the labels never leave this process."""
        boundary = uuid.uuid4().hex.encode()
        body = multipart.build(
            {
                "spec": (None, "application/json", json.dumps({"precision": precision}).encode()),
                "model": (
                    Path(model_path).name,
                    "application/octet-stream",
                    Path(model_path).read_bytes(),
                ),
                "inputs": ("inputs.npy", "application/octet-stream", npy.dump_numpy(inputs)),
            },
            boundary,
        )
        content_type = f"multipart/form-data; boundary={boundary.decode()}"
        _, submitted = self._request("POST", "/v1/evaluations", body, content_type)
        job = self.wait(submitted["job_id"], on_update)
        result = job["result"]
        if result.get("status") != OK:
            raise MeasurementFailed(result)
        return [
            npy.parse(
                self._request(
                    "GET", f"/v1/jobs/{job['job_id']}/outputs/{output['index']}", binary=True
                )[1]
            ).to_numpy()
            for output in result["outputs"]
        ]

    def _submit(self, model_path: Path, spec: JsonDict) -> JsonDict:
        sha = sha256_file(model_path)
        known = self.has_model(sha)
        if known:
            body = json.dumps({"model_sha256": sha, "spec": spec}).encode()
            _, payload = self._request("POST", "/v1/jobs", body, "application/json")
        else:
            boundary = uuid.uuid4().hex.encode()
            body = multipart.build(
                {
                    "spec": (None, "application/json", json.dumps(spec).encode()),
                    "model": (model_path.name, "application/octet-stream", model_path.read_bytes()),
                },
                boundary,
            )
            content_type = f"multipart/form-data; boundary={boundary.decode()}"
            _, payload = self._request("POST", "/v1/jobs", body, content_type)
        assert payload is not None
        payload["uploaded"] = not known
        return payload

    def job(self, job_id: str, wait_s: float = 0.0) -> JsonDict:
        query = f"?wait={wait_s:g}" if wait_s > 0 else ""
        _, payload = self._request(
            "GET", f"/v1/jobs/{job_id}{query}", timeout_s=self.request_timeout_s + wait_s
        )
        assert payload is not None
        return payload

    def wait(self, job_id: str, on_update: Callable[[JsonDict], None] | None = None) -> JsonDict:
        """Long-poll until the job is done, with growing wait windows (0.1 s … 10 s)."""
        deadline = time.monotonic() + self.job_timeout_s
        window = 0.1
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MeasurementTimeout(
                    f"job {job_id} on {self.url} not done after {self.job_timeout_s:g} s"
                )
            job = self.job(job_id, wait_s=min(window, remaining))
            if on_update:
                on_update(job)
            if job["state"] == "done":
                return job
            window = min(window * 2, 10.0)

    def measure(
        self,
        model_path: Path,
        spec: JsonDict,
        on_update: Callable[[JsonDict], None] | None = None,
        reference: Reference | None = None,
    ) -> JsonDict:
        """Submit, wait and return the ``ok`` result; raise :class:`MeasurementFailed` else.

        A job that ended in ``infra_error`` (the device's fault, not the candidate's) is
        submitted again, at most ``retries`` times."""
        attempt = 0
        while True:
            submitted = self.submit(Path(model_path), spec, reference)
            job = self.wait(submitted["job_id"], on_update)
            result = job["result"]
            result["job"] = {
                key: job[key] for key in ("job_id", "created_at", "started_at", "finished_at")
            }
            result["uploaded"] = submitted["uploaded"]
            result["attempts"] = attempt + 1
            if result.get("status") == OK:
                return result
            if result.get("status") != INFRA_ERROR or attempt >= self.retries:
                raise MeasurementFailed(result)
            time.sleep(self.backoff_s * 2**attempt)
            attempt += 1


def _reason(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__
