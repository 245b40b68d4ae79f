"""Bounded on-disk cache of uploaded models, built engines and measurement results.

Every file name is a hex digest computed here, never a name taken from a request. The cache is
kept under a byte budget by evicting the least recently used files (access bumps mtime).
"""

import hashlib
import json
import os
import re
import tempfile
import threading

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def is_sha256(text):
    return bool(_HEX64.match(text or ""))


def _digest(*parts):
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def engine_key(model_sha, spec, backend_version, device):
    """What a built engine depends on: model, precision, shapes, backend version, device."""
    shape_part = json.dumps(
        [spec.precision, spec.batch_size, spec.input_shape, spec.input_shapes], sort_keys=True
    )
    return _digest(model_sha, shape_part, backend_version, device)


def result_key(model_sha, spec, backend_version, device):
    return _digest(model_sha, spec.cache_key_part(), backend_version, device)


class DiskCache(object):
    def __init__(self, root, max_bytes):
        self.root = os.path.abspath(root)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        for sub in ("models", "engines", "results"):
            path = os.path.join(self.root, sub)
            if not os.path.isdir(path):
                os.makedirs(path)

    @property
    def max_file_bytes(self):
        """The largest file a job may write (an optimised graph, an engine): a quarter of the
        budget, so that one file never evicts most of the cache."""
        return self.max_bytes // 4

    @property
    def scratch_dir(self):
        """Where jobs keep their scratch folders (not part of the budget: removed after each
        job, and at start after an agent that was killed)."""
        return os.path.join(self.root, "jobs")

    def _path(self, kind, digest, suffix):
        if not is_sha256(digest):
            raise ValueError("cache keys are sha256 hex digests")
        return os.path.join(self.root, kind, digest + suffix)

    def model_path(self, sha):
        return self._path("models", sha, ".onnx")

    def engine_path(self, key):
        return self._path("engines", key, ".engine")

    def has_model(self, sha):
        path = self.model_path(sha)
        if os.path.exists(path):
            os.utime(path, None)
            return True
        return False

    def put_model(self, data):
        """Store model bytes; returns their sha256."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.model_path(sha)
        if not os.path.exists(path):
            self._write_atomic(path, data)
        else:
            os.utime(path, None)
        return sha

    def get_result(self, key):
        path = self._path("results", key, ".json")
        try:
            with open(path) as handle:
                result = json.load(handle)
        except (OSError, ValueError):
            return None
        os.utime(path, None)
        return result

    def put_result(self, key, result):
        data = json.dumps(result).encode("utf-8")
        self._write_atomic(self._path("results", key, ".json"), data)

    def _write_atomic(self, path, data):
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.rename(tmp, path)

    def size_bytes(self):
        return sum(size for _path, size, _mtime in self._entries())

    def _entries(self):
        entries = []
        for sub in ("models", "engines", "results"):
            folder = os.path.join(self.root, sub)
            for name in os.listdir(folder):
                if name.startswith(".tmp-"):
                    continue
                path = os.path.join(folder, name)
                try:
                    stat = os.stat(path)
                except OSError:
                    continue
                entries.append((path, stat.st_size, stat.st_mtime))
        return entries

    def evict(self, protect=()):
        """Delete least recently used files until the cache fits its budget; files in
        ``protect`` (the running job's model and engine) are kept. Returns files removed."""
        with self._lock:
            entries = sorted(self._entries(), key=lambda entry: entry[2])
            total = sum(size for _path, size, _mtime in entries)
            removed = []
            keep = set(os.path.abspath(p) for p in protect)
            for path, size, _mtime in entries:
                if total <= self.max_bytes:
                    break
                if path in keep:
                    continue
                try:
                    os.remove(path)
                except OSError:
                    continue
                total -= size
                removed.append(path)
            return removed
