"""A replica: one loaded model answering MLflow's scoring protocol under uvicorn, with the
product's app (``--server serving-ui``, ``replica_app``) or MLflow's FastAPI app kept for
comparison (``--server mlflow``), never through ``mlflow models serve`` (a CLI parent, twice
the start time). ``--replica-id`` only marks the process for ``LocalRuntime.discover``. Without a
network of its own it cannot bind the host's port: it is handed the bound socket
(``--listen-fd``, or as an object when forked from a ``zygote``).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from . import cgroups

SERVERS = ("serving-ui", "mlflow")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run one model server replica.")
    parser.add_argument("--replica-id", required=True)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server", choices=SERVERS, default=SERVERS[0])
    # A socket already bound to host:port, inherited from whoever started the replica.
    parser.add_argument("--listen-fd", type=int, default=-1)
    return parser.parse_args(argv)


def serve(args: argparse.Namespace, sock: socket.socket | None = None) -> None:
    """Load the model and answer requests until SIGTERM (a launched or a forked replica),
    on ``sock`` (or ``--listen-fd``) when given, else on a socket of its own. Where no
    cgroup holds it, it first sets the rlimits the runtime asked for (``cgroups``)."""
    cgroups.apply_floor(os.environ)
    print(
        f"replica {args.replica_id}: loading model from {args.model_path} ({args.server} server)",
        flush=True,
    )
    app = _app(args.server, args.model_path)

    import uvicorn

    if sock is None and args.listen_fd >= 0:
        sock = socket.socket(fileno=args.listen_fd)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        workers=1,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=60,
    )
    server = _server_class()(config) if sock is not None else uvicorn.Server(config)
    server.run(sockets=[sock] if sock is not None else None)
    if not server.started:
        sys.exit(3)  # uvicorn's exit status for a server that never started


def _server_class():
    import uvicorn

    class HandedSocketServer(uvicorn.Server):
        """Says where it serves, as uvicorn does for a socket it binds itself."""

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started and sockets:
                host, port = sockets[0].getsockname()[:2]
                logging.getLogger("uvicorn.error").info(
                    "Uvicorn running on http://%s:%d (a socket bound for it on the host)",
                    host,
                    port,
                )

    return HandedSocketServer


def main() -> None:
    serve(parse_args())


def _app(server: str, model_path: str):
    if server == "serving-ui":
        try:
            from endpoints.runtime.replica_app import load_app
        except ImportError as exc:
            # A per-model environment may hold an MLflow without what the app reuses.
            print(f"falling back to MLflow's scoring server: {exc}", flush=True)
        else:
            return load_app(model_path)
    from mlflow.pyfunc import scoring_server

    os.environ[scoring_server._SERVER_MODEL_PATH] = model_path
    return "mlflow.pyfunc.scoring_server.app:app"


if __name__ == "__main__":
    main()
