"""``manage.py run_cluster`` (``make run-cluster``): the cluster path on one machine, all on
127.0.0.1 with its data under ``var/cluster/``: PostgreSQL (``dev.devdb``), an MLflow
tracking server with artifact serving, a 2-node Ray cluster, then the product itself
(``run_product``) with ``SERVING_RUNTIME=ray``. Ctrl-C stops the product (its replicas
included), then the rest (docs/deploy.md).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from endpoints.dev import devdb, devstack
from endpoints.dev.devstack import LOOPBACK, ManagedProcess

# Ray otherwise picks this machine's own interface address; with this, every node, actor
# and socket of the one-machine cluster stays on loopback.
RAY_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def mlflow_server_command(port: int, data_dir: Path) -> list[str]:
    """An MLflow tracking server on loopback that serves (proxies) model artifacts."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        *(sys.executable, "-m", "mlflow", "server"),
        *("--host", LOOPBACK, "--port", str(port), "--workers", "1"),
        *("--backend-store-uri", f"sqlite:///{data_dir / 'mlflow.db'}"),
        "--serve-artifacts",
        *("--artifacts-destination", str(data_dir / "artifacts")),
    ]


def start_ray_cluster(node_cpus: int, nodes: int):
    """A head node and ``nodes - 1`` more, each a raylet of its own, on loopback. They
    share this machine's memory: each declares its part to Ray (a replica reserves its
    workload size's memory), not all of it as Ray would guess for each."""
    import psutil
    from ray.cluster_utils import Cluster

    os.environ.update(RAY_LOOPBACK_ENV)
    memory = psutil.virtual_memory().total // nodes
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={
            "num_cpus": node_cpus,
            "memory": memory,
            "node_ip_address": LOOPBACK,
            "include_dashboard": False,
        },
    )
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=node_cpus, memory=memory, node_ip_address=LOOPBACK)
    cluster.wait_for_nodes()
    return cluster


class Command(BaseCommand):
    help = "Run the product with replicas on a 2-node Ray cluster, PostgreSQL and MLflow."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--nodes", type=int, default=2)
        parser.add_argument("--node-cpus", type=int, default=2)

    def handle(self, *args: object, **options: object) -> None:
        self.stopping = False
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # SIGHUP: terminal closed
            signal.signal(signum, self._on_signal)
        root = Path(settings.VAR_DIR) / "cluster"
        root.mkdir(parents=True, exist_ok=True)
        services: list[ManagedProcess] = []
        cluster = None
        product = None
        try:
            data_dir = devdb.data_directory(Path(settings.VAR_DIR))
            self.say(f"Starting PostgreSQL (data in {data_dir}) …")
            pg = devdb.start_postgres(
                data_dir, root, Path(settings.VAR_DIR) / devdb.PASSWORD_FILE, new_session=True
            )
            services.append(pg.process)
            devdb.create_database(pg.port, "serving", pg.password)
            self.say("Starting the MLflow tracking server (artifact serving) …")
            mlflow_port = devstack.free_port()
            tracking = f"http://{LOOPBACK}:{mlflow_port}"
            mlflow = ManagedProcess(
                "mlflow", mlflow_server_command(mlflow_port, root / "mlflow"), root
            ).start()
            services.append(mlflow)
            mlflow.wait_until(
                lambda: devstack.http_status(tracking + "/health") == 200,
                timeout=120,
                what="the MLflow server",
            )
            self.say(f"Starting a {options['nodes']}-node Ray cluster …")
            # The nodes (and so the replicas' actors) inherit this process's environment.
            os.environ["SERVING_RAY_NODE_DIR"] = str(root / "ray-nodes")
            cluster = start_ray_cluster(int(options["node_cpus"]), int(options["nodes"]))
            env = {
                **RAY_LOOPBACK_ENV,
                "DATABASE_URL": pg.url("serving"),
                "MLFLOW_TRACKING_URI": tracking,
                "MLFLOW_REGISTRY_URI": tracking,
                "SERVING_RUNTIME": "ray",
                "RAY_ADDRESS": cluster.address,
                "SERVING_DATA_DIR": str(root / "serving"),
                "SERVING_RAY_NODE_DIR": str(root / "ray-nodes"),
                "PORT": str(options["port"]),
            }
            self.say(
                f"PostgreSQL on {LOOPBACK}:{pg.port}, MLflow at {tracking}, "
                f"Ray at {cluster.address}; starting the product …"
            )
            # On this terminal, so its banner and Ctrl-C reach it as with `make run`.
            product = ManagedProcess(
                "product",
                [sys.executable, "manage.py", "run_product"],
                None,
                env=env,
                new_session=False,
            ).start()
            while not self.stopping and product.alive:
                for service in services:
                    if not service.alive:
                        raise SystemExit(f"{service.name} exited; stopping (see {root}).")
                time.sleep(0.5)
        except devstack.StackError as exc:
            raise SystemExit(f"{exc} (logs in {root})") from None
        finally:
            if product is not None:
                # run_product stops its replicas (the actors) while Ray is still up.
                product.send_signal(signal.SIGTERM)
                devstack.stop_all([product], timeout=60)
            if cluster is not None:
                self.say("Stopping the Ray cluster …")
                cluster.shutdown()
            devstack.stop_all(services, timeout=20)
            self.say("Stopped.")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def say(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()
