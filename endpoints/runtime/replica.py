"""A replica: MLflow's own pyfunc scoring server app, run under uvicorn in this process.

Launched directly rather than through ``mlflow models serve`` (which keeps a CLI parent
alive and takes about twice as long to start). The ``--replica-id`` argument is not used
here: it marks the process so the runtime can find it again (see ``local.discover``).
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    parser = argparse.ArgumentParser(description="Run one model server replica.")
    parser.add_argument("--replica-id", required=True)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    from mlflow.pyfunc import scoring_server

    os.environ[scoring_server._SERVER_MODEL_PATH] = args.model_path
    print(f"replica {args.replica_id}: loading model from {args.model_path}", flush=True)

    import uvicorn

    uvicorn.run(
        "mlflow.pyfunc.scoring_server.app:app",
        host=args.host,
        port=args.port,
        workers=1,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=60,
    )


if __name__ == "__main__":
    main()
