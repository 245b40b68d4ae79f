"""Command line: ``python -m jetson_agent serve ...`` (also installed as ``vitopt-agent``)."""

import argparse
import logging
import os
import signal
import sys

from . import __version__, quiet
from .agent import Agent
from .backends import BUILTIN_NAMES, resolve_backend
from .cache import DiskCache
from .server import AgentHTTPServer
from .supervisor import JobProcess

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _parser():
    parser = argparse.ArgumentParser(
        prog="jetson_agent",
        description="vitopt's device agent: measures ONNX models on this device over HTTP.",
    )
    parser.add_argument("--version", action="version", version="jetson_agent " + __version__)
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser(
        "serve",
        help="serve the measurement API",
        description="Serve API v1 (see /v1/openapi.json). One job measures at a time.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind; loopback by default")
    serve.add_argument("--port", type=int, default=8765, help="TCP port (0 picks a free one)")
    serve.add_argument(
        "--backend",
        default="auto",
        help="auto (tensorrt, then trtexec, then onnxruntime), one of %s, or module:Class"
        % ", ".join(BUILTIN_NAMES),
    )
    serve.add_argument("--token-file", help="file holding the bearer token clients must send")
    serve.add_argument(
        "--device-type",
        help="the label a campaign's agents.device selects this agent by (e.g. nano-4gb-maxn); "
        "default: the device's own name",
    )
    serve.add_argument(
        "--cache-dir",
        default=os.path.join(os.path.expanduser("~"), ".cache", "jetson_agent"),
        help="models, engines and results are cached here",
    )
    serve.add_argument("--cache-max-mb", type=int, default=4096, help="cache size cap (LRU)")
    serve.add_argument("--max-upload-mb", type=int, default=256, help="largest model accepted")
    serve.add_argument("--build-timeout", type=float, default=900.0, help="seconds per build")
    serve.add_argument("--run-timeout", type=float, default=300.0, help="seconds per run phase")
    serve.add_argument(
        "--job-memory-mb", type=int, help="address-space cap for each job process (RLIMIT_AS)"
    )
    serve.add_argument(
        "--quiet-lock",
        metavar="DIR",
        help="a folder on this host: each job holds its lock while it times, and co-located "
        "work that takes it per step (a campaign's trials on this host) pauses meanwhile",
    )
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING")
    return parser


def _fail(message):
    sys.stderr.write("jetson_agent: error: %s\n" % message)
    return 2


def _read_token(path):
    with open(path) as handle:
        token = handle.read().strip()
    if not token:
        raise ValueError("token file %s is empty" % path)
    return token


def _stop(signum, frame):
    raise KeyboardInterrupt


def serve(args):
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(message)s",
    )
    try:
        token = _read_token(args.token_file) if args.token_file else None
        backend_name, target = resolve_backend(args.backend)
        cache = DiskCache(args.cache_dir, args.cache_max_mb * 1024 * 1024)
        jobs = JobProcess(
            target,
            args.build_timeout,
            args.run_timeout,
            args.job_memory_mb,
            scratch_dir=cache.scratch_dir,
            max_file_bytes=cache.max_file_bytes,
        )
        quiet_lock = quiet.prepare_folder(args.quiet_lock) if args.quiet_lock else None
        agent = Agent(
            backend_name,
            target,
            cache,
            jobs,
            device_type=args.device_type,
            quiet_lock=quiet_lock,
        )
        server = AgentHTTPServer(
            (args.host, args.port), agent, token, args.max_upload_mb * 1024 * 1024
        )
    except (OSError, ValueError) as exc:
        return _fail(str(exc))
    if args.host not in LOOPBACK and token is None:
        logging.warning(
            "listening on %s without a token: anyone who can reach this port can run models "
            "here; pass --token-file",
            args.host,
        )
    host, port = server.server_address[:2]
    sys.stdout.write(
        "jetson_agent %s listening on http://%s:%d (backend %s, %s; device %s)\n"
        % (__version__, host, port, agent.backend.name, agent.backend_version, agent.device)
    )
    sys.stdout.flush()
    signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        agent.close()
    return 0


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.command != "serve":
        _parser().print_help()
        return 2
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
