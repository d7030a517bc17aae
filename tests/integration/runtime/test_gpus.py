"""GPUs on the local runtime, with a fake device list (``SERVING_GPU_DEVICES``) and fake
device nodes: no GPU is on this machine. Finding the devices, giving each replica free
ones (the test database and Redis), what a replica given some sees (its environment, the
device nodes in a real bubblewrap sandbox), and /metrics through a fake NVML module.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from endpoints import kv
from endpoints.models import ComputeConfig, ReplicaState, ServingEndpoint
from endpoints.provisioning import apply, replicas
from endpoints.provisioning.actions import StartReplica
from endpoints.provisioning.passes import Pass
from endpoints.runtime import LocalRuntime, ReplicaSpec, gpus, local, sandbox
from endpoints.runtime.base import ReplicaLimits
from endpoints.telemetry import prometheus
from tests.support.rows import add_replica, add_version


def fake_node(path: Path) -> Path:
    """A character device like /dev/null (1, 3), under another name."""
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    path.chmod(0o666)  # as the real nodes are (mknod's mode went through the umask)
    return path


@pytest.fixture
def fake_dev(tmp_path, monkeypatch) -> Path:
    dev = tmp_path / "dev"
    dev.mkdir()
    monkeypatch.setattr(gpus, "DEV", dev)
    monkeypatch.delenv(gpus.DEVICES_ENV, raising=False)
    return dev


# --- finding them, and what a replica given some sees -----------------------------------------


def test_devices_are_the_nvidia_nodes_unless_a_list_is_set(fake_dev, monkeypatch):
    assert gpus.local_devices() == ()
    for name in ("nvidia1", "nvidia0", "nvidiactl", "nvidia-uvm", "nvidia10"):
        (fake_dev / name).touch()
    assert gpus.local_devices() == (0, 1, 10)
    monkeypatch.setenv(gpus.DEVICES_ENV, "3, 2")
    assert gpus.local_devices() == (2, 3)
    with pytest.raises(ValueError, match="GPU indexes"):
        gpus.parse_devices("0,gpu1")


def test_a_replica_binds_its_gpus_nodes_and_the_shared_ones_that_exist(fake_dev):
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (fake_dev / name).touch()
    assert gpus.device_nodes(()) == []
    assert gpus.device_nodes((1,)) == [
        str(fake_dev / "nvidia1"),
        str(fake_dev / "nvidiactl"),
        str(fake_dev / "nvidia-uvm"),
    ]


def test_a_replica_sees_its_gpus_and_a_cpu_replica_none():
    spec = ReplicaSpec("r1", "/models/m", "127.0.0.1", 1, "/tmp/r1.log", sys.executable)
    assert local.replica_environment(spec)["CUDA_VISIBLE_DEVICES"] == ""
    given = replace(spec, limits=ReplicaLimits(gpus=2, gpu_devices=(1, 3)))
    env = local.replica_environment(given)
    assert (env["CUDA_VISIBLE_DEVICES"], env["CUDA_DEVICE_ORDER"]) == ("1,3", "PCI_BUS_ID")


def test_a_replica_with_gpus_is_not_forked_from_a_zygote(tmp_path, monkeypatch):
    """A zygote's view has no GPU: the replica is launched in a view of its own."""
    launched = []

    def no_zygote(*args, **kwargs):
        raise AssertionError("a GPU replica went to the zygote")

    monkeypatch.setattr(
        local, "_launch", lambda cmd, env, log, enforced: launched.append(env) or 4242
    )
    runtime = LocalRuntime()
    monkeypatch.setattr(runtime.zygotes, "start_replica", no_zygote)
    spec = ReplicaSpec(
        "r1",
        str(tmp_path),
        "127.0.0.1",
        1,
        str(tmp_path / "r1.log"),
        sys.executable,
        start_mode="zygote",
        zygote_dir=str(tmp_path / "zygotes"),
        sandbox="off",
        limits=ReplicaLimits(gpus=1, gpu_devices=(1,)),
    )
    assert runtime.start(spec) == 4242
    assert launched[0]["CUDA_VISIBLE_DEVICES"] == "1"


@pytest.mark.skipif(not sandbox.bwrap() or os.geteuid() != 0, reason="needs bwrap and root")
def test_the_sandbox_shows_a_replica_its_device_nodes_and_no_other(tmp_path):
    nodes = tmp_path / "host-dev"
    nodes.mkdir()
    given, other = fake_node(nodes / "nvidia0"), fake_node(nodes / "nvidia1")
    # Lists the GPU nodes it sees, and writes to each (as a CUDA library opens them).
    script = (
        "import os; found = sorted(n for n in os.listdir('/dev') if n.startswith('nvidia')); "
        "[open('/dev/' + n, 'w').write('x') for n in found]; print(found)"
    )

    def run(devices: list[str]) -> subprocess.CompletedProcess:
        command = sandbox.process_command(
            [sys.executable, "-c", script],
            python=sys.executable,
            model_path=str(tmp_path),
            network=sandbox.NETWORK_HOST,
            devices=devices,
        )
        env = sandbox.environment(local.base_environment())
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    bound = run([str(given)])
    assert bound.returncode == 0, bound.stderr
    assert bound.stdout.strip() == "['nvidia0']"
    assert other.exists()  # on the host, not in the view
    assert run([]).stdout.strip() == "[]"


# --- giving each replica free GPUs --------------------------------------------------------------


@pytest.fixture
def gpu_version(owner, redis_server, monkeypatch):
    monkeypatch.setenv(gpus.DEVICES_ENV, "0,1")
    endpoint = ServingEndpoint.objects.create(registered_model_name="gpu-model", creator=owner)
    ComputeConfig.objects.create(endpoint=endpoint, stage="Production", workload_type="GPU_SMALL")
    version = add_version(endpoint, "1", "Production")
    yield version
    for device in (0, 1):
        kv.redis_client().delete(kv.gpu_reservation_key(socket.gethostname(), device))
    kv.redis_client().delete(kv.gpu_wait_key(version.pk))


def holding(version, devices: str, **fields):
    return add_replica(
        version, ("127.0.0.1", 0), gpu_devices=devices, worker_host=socket.gethostname(), **fields
    )


@pytest.mark.django_db
def test_each_replica_gets_gpus_no_live_replica_holds(gpu_version):
    runtime = LocalRuntime()
    assert replicas.allocate_gpus(runtime, gpu_version) == (0,)
    holding(gpu_version, "0")
    replicas.release_gpus((0,))
    assert replicas.allocate_gpus(runtime, gpu_version) == (1,)
    holding(gpu_version, "1", state=ReplicaState.TERMINATING)  # draining: still its own
    replicas.release_gpus((1,))
    assert replicas.allocate_gpus(runtime, gpu_version) is None


@pytest.mark.django_db
def test_a_stopped_replicas_gpu_is_free_again_and_a_reserved_one_is_not(gpu_version):
    holding(gpu_version, "0", state=ReplicaState.ERROR)
    # Another worker is starting a replica on GPU 0 right now.
    kv.redis_client().set(kv.gpu_reservation_key(socket.gethostname(), 0), "1", ex=60)
    assert replicas.allocate_gpus(LocalRuntime(), gpu_version) == (1,)


@pytest.mark.django_db
def test_a_cpu_replica_or_one_placed_by_ray_gets_no_device(gpu_version):
    assert replicas.allocate_gpus(object(), gpu_version) == ()  # Ray chooses its own
    ComputeConfig.objects.create(endpoint=gpu_version.endpoint, stage="Production")
    gpu_version.service_config = None
    assert replicas.allocate_gpus(LocalRuntime(), gpu_version) == ()


@pytest.mark.django_db
def test_a_launched_replica_is_given_its_rows_gpus(gpu_version):
    started = []

    class Recording:
        def start(self, spec):
            started.append(spec)
            return 4242

        def placement(self, replica_id):
            return None

    replica = holding(gpu_version, "1", state=ReplicaState.PENDING)
    assert replicas.launch(Recording(), replica) == ""
    assert started[0].limits.gpus == 1
    assert started[0].limits.gpu_devices == (1,)


@pytest.mark.django_db
def test_a_replica_waits_for_a_free_gpu_then_fails_to_start_saying_why(gpu_version, settings):
    """So a rollout needing more GPUs than there are fails in the end (and can be changed)
    instead of staying "Updating" for good."""
    holding(gpu_version, "0")
    holding(gpu_version, "1")
    run = Pass(gpu_version.endpoint, LocalRuntime(), fence=lambda: None)
    apply.execute(run, [StartReplica("1")])
    gpu_version.refresh_from_db()
    assert gpu_version.service_message == "No free GPU for a replica; waiting for one."
    assert gpu_version.replicas.count() == 2
    # Past the start timeout (the wait began long enough ago):
    settings.SERVING = {**settings.SERVING, "REPLICA_START_TIMEOUT_SECONDS": 0}
    apply.execute(run, [StartReplica("1")])
    failed = gpu_version.replicas.get(state=ReplicaState.ERROR)
    assert failed.state_message == (
        "No GPU was free for this replica within 0 s: other replicas hold them."
    )
    gpu_version.refresh_from_db()
    assert gpu_version.start_failures == 1


# --- /metrics through NVML ----------------------------------------------------------------------


class _NVMLError(Exception):
    pass


def fake_nvml(*, fails: bool = False) -> types.ModuleType:
    """The calls of nvidia-ml-py's ``pynvml`` that the collector makes, for two GPUs."""
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = _NVMLError

    def init():
        if fails:
            raise _NVMLError("Driver Not Loaded")

    nvml.nvmlInit, nvml.nvmlShutdown = init, lambda: None
    nvml.nvmlDeviceGetCount = lambda: 2
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetName = lambda h: b"Tesla T4" if h == 0 else "NVIDIA A10G"
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(
        used=(h + 1) * 2**30, total=16 * 2**30
    )
    nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=25 * (h + 1))
    return nvml


def gpu_samples() -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels["gpu"]): s.value
        for family in text_string_to_metric_families(prometheus.render().decode())
        for s in family.samples
        if s.name.startswith("serving_ui_gpu_")
    }


@pytest.mark.django_db
def test_metrics_show_gpu_memory_and_utilisation_where_nvml_reads_them(monkeypatch, redis_server):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    assert gpu_samples() == {
        ("serving_ui_gpu_memory_used_bytes", "0"): 2**30,
        ("serving_ui_gpu_memory_used_bytes", "1"): 2 * 2**30,
        ("serving_ui_gpu_memory_total_bytes", "0"): 16 * 2**30,
        ("serving_ui_gpu_memory_total_bytes", "1"): 16 * 2**30,
        ("serving_ui_gpu_utilization_ratio", "0"): 0.25,
        ("serving_ui_gpu_utilization_ratio", "1"): 0.5,
    }
    assert 'name="Tesla T4"' in prometheus.render().decode()


@pytest.mark.django_db
def test_metrics_have_no_gpu_lines_without_nvml_or_its_driver(monkeypatch, redis_server):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: the import fails
    assert gpu_samples() == {}
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(fails=True))
    assert gpu_samples() == {}
