"""A hostile model for the sandbox's tests: its ``predict`` tries what untrusted code on the
serving host would try and reports what it got (``"denied: …"`` or ``"ALLOWED: …"``), and
the checks that every attempt was denied. Control probes (its own model file, its private
temp) must succeed, so a probe that cannot work at all proves nothing."""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import threading
import uuid
from pathlib import Path

import pandas as pd
from django.conf import settings

from endpoints.provisioning import environments
from endpoints.runtime import sandbox

SECRET_VARIABLE = "DJANGO_SUPERUSER_PASSWORD"
SECRET_VALUE = f"hostile-probe-{uuid.uuid4().hex}"
# The report's entries about sockets made on the host's network.
INHERITED = ("the bound socket at load", "accepted socket")


def hostile_model():
    """The model; the helpers it uses are defined in here so that cloudpickle stores them
    with it (a replica cannot import the test modules)."""
    import mlflow

    def host_sockets():
        """The TCP sockets this process holds (the ones a replica holds were made on the host's
        network: the one it serves on, and every connection it accepts)."""
        import os
        import socket

        found = []
        for name in os.listdir("/proc/self/fd"):
            try:
                sock = socket.socket(fileno=os.dup(int(name)))
            except (OSError, ValueError):
                continue
            if sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM:
                found.append(sock)
            else:
                sock.close()
        return found

    def reaim(sock, port, attempt, prefix):
        """What a model would do to aim a socket made on the host's network at a service of
        the host (``port`` on 127.0.0.1): disconnect it (``connect`` to ``AF_UNSPEC``), then
        ``connect``, a TCP Fast Open ``sendto``, a 32-bit ``connect`` (``int 0x80``), and
        io_uring (whose operations connect without a system call of their own)."""
        import ctypes
        import os
        import socket

        libc = ctypes.CDLL(None, use_errno=True)

        def disconnect():
            unspec = (ctypes.c_char * 16)()  # sa_family AF_UNSPEC
            if libc.connect(sock.fileno(), unspec, 16) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code))
            return "disconnected"

        def connect():
            sock.connect(("127.0.0.1", port))
            return sock.getpeername()

        def io_uring():
            params = ctypes.create_string_buffer(120)
            fd = libc.syscall(425, 4, params)  # io_uring_setup
            if fd < 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code))
            os.close(fd)
            return "a ring"

        attempt(f"{prefix}: disconnect", disconnect)
        attempt(f"{prefix}: connect", connect)
        attempt(
            f"{prefix}: fast open",
            lambda: sock.sendto(b"x", socket.MSG_FASTOPEN, ("127.0.0.1", port)),
        )
        attempt(f"{prefix}: 32-bit connect", lambda: compat_connect(sock.fileno(), port))
        attempt(f"{prefix}: io_uring", io_uring)

    def reaim_undo(sock):
        """Disconnect ``sock`` again, where ``reaim`` connected it."""
        import ctypes

        ctypes.CDLL(None).connect(sock.fileno(), (ctypes.c_char * 16)(), 16)

    def compat_connect(fd, port):
        """``connect`` through the 32-bit system-call entry of x86-64 (other call numbers,
        another ABI), in a child process: the kernel may not offer the entry at all."""
        import ctypes
        import mmap
        import os
        import platform
        import struct

        if platform.machine() != "x86_64":
            raise OSError("no 32-bit entry on this machine")
        map_32bit = 0x40  # the addresses must fit the 32-bit registers
        page = mmap.mmap(
            -1,
            4096,
            flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | map_32bit,
            prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC,
        )
        base = ctypes.addressof(ctypes.c_char.from_buffer(page))
        address = struct.pack("<H", 2) + struct.pack(">H", port) + bytes([127, 0, 0, 1]) + bytes(8)
        page[256 : 256 + len(address)] = address
        # push rbx; mov eax, 362 (connect); mov ebx, fd; mov ecx, address; mov edx, 16;
        # int 0x80; pop rbx; ret
        code = b"\x53\xb8" + struct.pack("<I", 362) + b"\xbb" + struct.pack("<I", fd)
        code += b"\xb9" + struct.pack("<I", base + 256) + b"\xba" + struct.pack("<I", 16)
        code += b"\xcd\x80\x5b\xc3"
        page[: len(code)] = code
        call = ctypes.CFUNCTYPE(ctypes.c_int)(base)
        pid = os.fork()
        if pid == 0:
            result = call()
            os._exit(0 if result >= 0 else min(-result, 255))
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            raise OSError(f"killed by signal {os.WTERMSIG(status)}")
        if os.WEXITSTATUS(status):
            raise OSError(os.WEXITSTATUS(status), os.strerror(os.WEXITSTATUS(status)))
        return "connected"

    class Hostile(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            """While the model loads, the socket the replica will serve on is already
            bound on the host's network: aim it at the host's service (its port is in the
            model's configuration)."""
            self.at_load = {}

            def attempt(name, action):
                try:
                    self.at_load[name] = f"ALLOWED: {str(action())[:200]}"
                except Exception as exc:  # every failure is a denial to report
                    self.at_load[name] = f"denied: {type(exc).__name__}: {exc}"[:300]

            port = context.model_config["host_port"]
            found = host_sockets()
            self.at_load["host sockets at load"] = len(found)
            for sock in found:
                reaim(sock, port, attempt, "the bound socket at load")
                # Leave it as found (unconnected): otherwise the replica never serves.
                try:
                    reaim_undo(sock)
                finally:
                    sock.close()

        def predict(self, context, model_input: pd.DataFrame, params=None):
            import glob
            import json
            import os
            import site
            import socket

            targets = json.loads(model_input["targets"][0])
            report = dict(self.at_load)

            def attempt(name, action):
                try:
                    report[name] = f"ALLOWED: {str(action())[:200]}"
                except Exception as exc:  # every failure is a denial to report
                    report[name] = f"denied: {type(exc).__name__}: {exc}"[:300]

            # Every connection accepted from the host but the one asking (whose port on
            # the client's side the request names).
            accepted = []
            for sock in host_sockets():
                try:
                    peer = sock.getpeername()[1]
                except OSError:
                    peer = None  # the listening socket: left alone, it serves the probe
                if peer is not None and peer != targets["probe_port"]:
                    accepted.append(sock)
                else:
                    sock.close()
            report["accepted sockets"] = len(accepted)
            for index, sock in enumerate(accepted):
                reaim(sock, targets["host_port"], attempt, f"accepted socket {index}")

            def read(path):
                with open(path, "rb") as f:
                    return f.read(64)

            def write(path):
                with open(path, "w") as f:
                    f.write("import os\n")
                return path

            def redis(command):
                with socket.create_connection(("127.0.0.1", targets["redis_port"]), 2) as c:
                    c.sendall(command)
                    answer = c.recv(200)
                if answer.startswith((b"+", b"$", b":", b"*")):
                    return answer
                raise PermissionError(answer.decode(errors="replace").strip())

            def environ_of(pid):
                return read(f"/proc/{pid}/environ")

            for name, path in targets["read"].items():
                attempt(f"read {name}", lambda path=path: read(path))
            listed = {}
            for name, path in targets["list"].items():
                try:
                    listed[name] = sorted(os.listdir(path))
                except OSError:
                    listed[name] = []
            report["listed"] = listed
            for name, pid in targets["pids"].items():
                attempt(f"environ of {name}", lambda pid=pid: environ_of(pid))
            attempt("other processes", lambda: [p for p in os.listdir("/proc") if p.isdigit()])

            def connect(port):
                with socket.create_connection(("127.0.0.1", port), 2) as c:
                    return c.getpeername()

            report["interfaces"] = sorted(name for _, name in socket.if_nameindex())
            for name, port in targets["connect"].items():
                attempt(f"connect to {name}", lambda port=port: connect(port))
            attempt("redis without password", lambda: redis(b"PING\r\n"))
            attempt("redis with a guessed password", lambda: redis(b"AUTH guessed\r\nPING\r\n"))
            pth = [*site.getsitepackages(), *targets["site_packages"]]
            for directory in pth:
                attempt(f"write .pth into {directory}", lambda d=directory: write(f"{d}/x.pth"))
            for name, path in targets["write"].items():
                attempt(f"write {name}", lambda path=path: write(path))
            attempt("control: own model", lambda: read(targets["own_model"]))
            attempt("control: private temp", lambda: write("/tmp/probe.txt"))
            report["uid"] = os.getuid()
            report["environment"] = dict(os.environ)
            report["models seen"] = sorted(glob.glob(targets["models_root"] + "/*"))
            return [json.dumps(report)] * len(model_input)

    return Hostile()


def targets(
    own_model: str,
    other: str,
    pids: dict[str, int],
    listening: int,
    *,
    models_root: str = "",
    services: dict[str, int] | None = None,
) -> dict:
    """What the model tries: ``own_model`` is its directory, ``other`` another model's on
    this host, ``listening`` a service's port on the host's loopback; ``services``: more
    ports it must not reach (without a network of its own)."""
    var = Path(settings.VAR_DIR)
    product_site = [p for p in sys.path if p.endswith("site-packages")]
    redis_port = int(settings.REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    return {
        "read": {
            "secret key": str(var / "secret_key"),
            "database": os.environ.get("TEST_DATABASE_PATH", str(var / "db.sqlite3")),
            "redis password": str(var / "redis_password"),
            "another model": str(Path(other) / "MLmodel"),
            "settings module": str(Path(settings.BASE_DIR) / "serving_ui" / "settings.py"),
            "the project's README": str(Path(settings.BASE_DIR) / "README.md"),
            "shadow": "/etc/shadow",
        },
        "list": {
            "var": str(var),
            "project": str(settings.BASE_DIR),
            "logs": str(environments.data_dir() / "logs"),
        },
        "pids": pids,
        "host_port": listening,
        "redis_port": redis_port,
        "connect": {
            "a service on the host's loopback": listening,
            "redis": redis_port,
            **(services or {}),
        },
        "site_packages": product_site,
        "write": {
            "the project": str(Path(settings.BASE_DIR) / "hostile.txt"),
            "var": str(var / "hostile.txt"),
            "its own model": str(Path(own_model) / "hostile.txt"),
            "the root": "/hostile.txt",
            "the runtime code": str(Path(sandbox.__file__).parent / "hostile.py"),
        },
        "own_model": str(Path(own_model) / "MLmodel"),
        "models_root": models_root or str(environments.models_root()),
    }


def probe(address: tuple[str, int], targets: dict) -> dict:
    """Ask the model at ``address`` to try everything, while another connection to it
    stays open and idle (an accepted socket for it to re-aim)."""
    with socket.create_connection(address, timeout=60) as idle:
        idle.getsockname()
        conn = http.client.HTTPConnection(*address, timeout=60)
        conn.connect()
        body = {
            "dataframe_split": {
                "columns": ["targets"],
                "data": [[json.dumps({**targets, "probe_port": conn.sock.getsockname()[1]})]],
            }
        }
        conn.request("POST", "/invocations", json.dumps(body), {"Content-Type": "application/json"})
        answer = conn.getresponse()
        text = answer.read()
        conn.close()
    assert answer.status == 200, text
    return json.loads(json.loads(text)["predictions"][0])


class HostService:
    """A service on the host's loopback that counts the connections it accepts: none may
    come from a replica without a network."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return  # closed
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.server.close()


def assert_confined(report: dict, targets: dict, network: str = sandbox.NETWORK_NONE) -> None:
    allowed = {
        name: outcome
        for name, outcome in report.items()
        if isinstance(outcome, str) and outcome.startswith("ALLOWED") and "control" not in name
    }
    # The only process it sees is itself (and, on a Ray node, the sandbox's own init,
    # which takes it down with the actor).
    assert report["other processes"] in ("ALLOWED: ['1']", "ALLOWED: []", "ALLOWED: ['1', '2']"), (
        report
    )
    allowed.pop("other processes")
    connects = [f"connect to {name}" for name in targets["connect"]]
    inherited = [name for name in report if name.startswith(INHERITED) and ":" in name]
    if network == sandbox.NETWORK_HOST:
        # The host's network: it connects, and Redis still wants the password.
        for name in connects:
            assert allowed.pop(name), report
        for name in inherited:
            allowed.pop(name, None)
        assert "NOAUTH" in report["redis without password"], report
        assert "WRONGPASS" in report["redis with a guessed password"], report
    else:
        # A network of its own: its loopback only, nothing of the host's answers, and no
        # socket it holds from the host can be aimed anywhere.
        assert report["interfaces"] == ["lo"], report
        for name in connects:  # refused by the filter (or by its own empty loopback)
            assert report[name].startswith(("denied: PermissionError", "denied: Connection")), (
                report
            )
        assert report["host sockets at load"] >= 1, report
        assert report["accepted sockets"] >= 1, report
        for name in inherited:
            # Refused by the filter; the 32-bit entry may also be missing from the kernel.
            no_entry = "32-bit" in name and ("signal" in report[name] or "entry" in report[name])
            assert report[name].startswith("denied: PermissionError") or no_entry, report
    assert allowed == {}, json.dumps(allowed, indent=1)
    assert report["control: own model"].startswith("ALLOWED"), report
    assert report["control: private temp"].startswith("ALLOWED"), report
    if sandbox.sandbox_uid() is not None:
        assert report["uid"] == sandbox.sandbox_uid()
    env = report["environment"]
    assert not [k for k in env if k.startswith(("DJANGO", "REDIS", "DATABASE", "SECRET"))], env
    password = registry_password()
    assert not [k for k, v in env.items() if password in v or SECRET_VALUE in v], env
    # Of every model on the host it sees its own only; of var/ and the project, only the
    # directories on the way to its model and to the replica code.
    own = Path(targets["own_model"]).parent
    seen = report["models seen"]
    assert seen and all(own.is_relative_to(path) for path in seen), seen
    listed = report["listed"]
    var = Path(targets["list"]["var"])
    assert all(own.is_relative_to(var / name) for name in listed["var"]), listed
    assert set(listed["project"]) <= {"endpoints", ".venv"}, listed
    assert listed["logs"] == [], listed


def registry_password() -> str:
    return (Path(settings.VAR_DIR) / "redis_password").read_text().strip()
