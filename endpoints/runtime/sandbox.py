"""The sandbox a model's code runs in, the same rules for every runtime: a bubblewrap
(``bwrap``) view holding the system, its Python, the replica code and its own model
read-only, a private ``/tmp`` and ``/proc``, an unprivileged user, and by default no network
of its own (the port it serves on is bound for it on the host). ``SERVING_SANDBOX=off``
turns it off. docs/security.md ("Threat model") says what a model can reach, and why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MODES = ("bwrap", "off")
NETWORK_NONE, NETWORK_HOST = "none", "host"
NETWORKS = (NETWORK_NONE, NETWORK_HOST)
# The sandbox's private temp (a fresh tmpfs of its own, never the host's /tmp).
TMP = "/tmp"  # noqa: S108
SHM = "/dev/shm"  # noqa: S108
PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
# Only the replica code of the project is in view (so the runtime imports only itself:
# tests/unit/test_layout.py).
RUNTIME_FILES = (PROJECT_ROOT / "endpoints" / "__init__.py", PROJECT_ROOT / "endpoints" / "runtime")
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/mime.types",
)
# What a sandboxed process has instead of the host's home and temp.
PRIVATE_ENV = {"HOME": TMP, "TMPDIR": TMP}
# Capabilities a zygote keeps (it runs no model code): new namespaces and mounts for each
# child, bringing up the loopback of a child's own network namespace (which, when the
# product is not root, belongs to the zygote's user namespace: CAP_SYS_ADMIN is not enough),
# and switching the child to the unprivileged user.
ZYGOTE_CAPS = ("CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SETUID", "CAP_SETGID")
DROP_CAPS = ("CAP_SETUID", "CAP_SETGID")
DEFAULT_UID = 65534
# Processes that carry a sandboxed command line without being it.
LAUNCHERS = ("bwrap", "setpriv")


def mode() -> str:
    """``SERVING_SANDBOX``: "bwrap" by default where bubblewrap is installed, else "off"."""
    value = os.environ.get("SERVING_SANDBOX", "").strip()
    if not value:
        return "bwrap" if bwrap() else "off"
    if value not in MODES:
        raise ValueError(f"SERVING_SANDBOX must be one of {', '.join(MODES)}, got {value!r}")
    return value


def bwrap() -> str:
    return shutil.which("bwrap") or ""


def sandbox_uid() -> int | None:
    """The user model code runs as when the product runs as root; None otherwise (the
    product's own user, already unprivileged, inside a user namespace)."""
    if os.geteuid() != 0:
        return None
    return int(os.environ.get("SERVING_SANDBOX_UID", str(DEFAULT_UID)))


@dataclass
class View:
    """What a sandboxed process sees of the host's files, at the same paths."""

    read_only: list[str] = field(default_factory=list)
    writable: list[str] = field(default_factory=list)
    # Device nodes usable in the view (a replica's GPUs), in its ``/dev`` by their names.
    devices: list[str] = field(default_factory=list)

    def args(self, tmp_mb: int = 0) -> list[str]:
        """A fresh root, ``/dev``, ``/proc``, a private ``/tmp`` and ``/dev/shm`` (each at
        most ``tmp_mb`` MiB; 0: the kernel's default, half the host's memory), then the
        host's paths; the root and ``/dev`` end read-only, so the only tmpfs mounts that
        take writes are the two sized ones."""
        size = ["--size", str(tmp_mb * 1024 * 1024)] if tmp_mb else []
        args = ["--perms", "0755", "--tmpfs", "/", "--dev", "/dev", "--proc", "/proc"]
        args += ["--perms", "1777", *size, "--tmpfs", TMP]
        args += ["--perms", "1777", *size, "--tmpfs", SHM]
        made: set[str] = {"/", "/dev", "/proc", TMP, SHM}
        bound: list[str] = []
        mounts = {(os.path.realpath(p), "--ro-bind") for p in self.read_only}
        mounts |= {(os.path.realpath(p), "--bind") for p in self.writable}
        for real, how in sorted(mounts, key=lambda m: (len(m[0]), m[1] == "--ro-bind")):
            if _covered(real, bound):
                continue  # already visible through a parent
            args += _dirs(os.path.dirname(real), made, bound)
            args += [how, real, real]
            bound.append(real)
        for path in sorted({*self.read_only, *self.writable}):
            args += _links(path, made, bound)
        for device in self.devices:
            args += ["--dev-bind", device, f"/dev/{os.path.basename(device)}"]
        return [*args, "--remount-ro", "/dev", "--remount-ro", "/"]


def _covered(path: str, bound: list[str]) -> bool:
    return any(path == b or path.startswith(b.rstrip("/") + "/") for b in bound)


def _dirs(path: str, made: set[str], bound: list[str]) -> list[str]:
    """``path`` and its parents as directories (0755) of the view, where not there yet."""
    args: list[str] = []
    current = "/"
    for part in Path(path).parts[1:]:
        current = os.path.join(current, part)
        if current not in made and not _covered(current, bound):
            args += ["--perms", "0755", "--dir", current]
            made.add(current)
    return args


def _links(path: str, made: set[str], bound: list[str]) -> list[str]:
    """The symbolic links on the way to ``path``, so it resolves in the view as on the
    host (its real location is bound)."""
    args: list[str] = []
    current = "/"
    for part in Path(path).parts[1:]:
        following = os.path.join(current, part)
        if os.path.islink(following):
            if following not in made and not _covered(following, bound):
                args += _dirs(current, made, bound)
                args += ["--symlink", os.readlink(following), following]
                made.add(following)
            current = os.path.realpath(following)
        else:
            current = following
    return args


def system_paths() -> list[str]:
    return [p for p in (*SYSTEM_DIRS, *SYSTEM_FILES) if os.path.lexists(p)]


def python_paths(python: str) -> list[str]:
    """The interpreter ``python`` runs with: its environment, its base installation, and the
    product's own environment (per-model environments are layered over it)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    env = Path(python).parent.parent
    paths.add(str(env))
    cfg = env / "pyvenv.cfg"
    if cfg.exists():
        for line in cfg.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home":
                paths.add(str(Path(value.strip()).parent))
    return sorted(p for p in paths if os.path.exists(p))


def runtime_paths() -> list[str]:
    return [str(p) for p in RUNTIME_FILES]


def base_args(
    *, new_pid_namespace: bool, own_network: bool = False, bwrap_init: bool = False
) -> list[str]:
    """``bwrap_init``: bwrap's own init is process 1 of the new process namespace (the
    command is its child), so the command dies when bwrap does; otherwise the command is
    process 1, which the kernel does not kill on its parent's death."""
    args = [
        bwrap(),
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "replica",
    ]
    if new_pid_namespace:
        args += ["--unshare-pid"] if bwrap_init else ["--unshare-pid", "--as-pid-1"]
    if own_network:
        args += ["--unshare-net"]
    if os.geteuid() != 0:
        args += ["--unshare-user"]
    return args


def drop_privileges_prefix() -> list[str]:
    """Inside the view: become the unprivileged user, without a way back, then exec."""
    uid = sandbox_uid()
    if uid is None:
        return []
    return [
        "/usr/bin/setpriv",
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--no-new-privs",
        "--",
    ]


def capability_args(caps: Iterable[str]) -> list[str]:
    caps = list(caps)
    if not caps:
        return []
    # Not root: capabilities within a user namespace of its own, as its root.
    args = [] if os.geteuid() == 0 else ["--uid", "0", "--gid", "0"]
    for cap in caps:
        args += ["--cap-add", cap]
    return args


def process_command(
    command: list[str],
    *,
    python: str,
    model_path: str,
    network: str = NETWORK_NONE,
    die_with_parent: bool = False,
    seccomp_fd: int | None = None,
    tmp_mb: int = 0,
    devices: Sequence[str] = (),
) -> list[str]:
    """``command`` (a fresh replica) confined to its model directory; with ``network``
    ``none``, the socket it serves on must be passed to it (``base.listening_socket``),
    and so must the filter that keeps it from connecting (``seccomp_fd``).
    ``die_with_parent``: killed when the process that starts bwrap dies; ``tmp_mb``: the
    size of its ``/tmp`` and ``/dev/shm``; ``devices``: the device nodes of its GPUs."""
    view = View(
        read_only=[*system_paths(), *python_paths(python), *runtime_paths(), model_path],
        devices=list(devices),
    )
    return [
        *base_args(
            new_pid_namespace=True,
            own_network=network == NETWORK_NONE,
            bwrap_init=die_with_parent,
        ),
        *(["--die-with-parent"] if die_with_parent else []),
        *view.args(tmp_mb),
        *capability_args(DROP_CAPS if sandbox_uid() is not None else ()),
        *(["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else []),
        "--chdir",
        TMP,
        "--",
        *drop_privileges_prefix(),
        *command,
    ]


def zygote_command(
    command: list[str], *, python: str, models_root: str, zygote_dir: str
) -> list[str]:
    """A zygote: every model read-only in view (each child keeps its own only), its socket
    directory writable (hidden from its children)."""
    view = View(
        read_only=[*system_paths(), *python_paths(python), *runtime_paths(), models_root],
        writable=[zygote_dir],
    )
    return [
        *base_args(new_pid_namespace=False),
        # Stopping bwrap stops the zygote (the replicas it forked keep running).
        "--die-with-parent",
        *view.args(),
        *capability_args(ZYGOTE_CAPS),
        "--chdir",
        TMP,
        "--",
        *command,
    ]


def build_command(
    command: list[str], *, python: str, writable: list[str], read_only: list[str]
) -> list[str]:
    """``pip install`` of a model's requirements: the environment being built writable,
    nothing else of the host; killed with its parent; the network is the host's."""
    view = View(read_only=[*system_paths(), *python_paths(python), *read_only], writable=writable)
    return [
        *base_args(new_pid_namespace=True),
        "--die-with-parent",
        *view.args(),
        *capability_args(DROP_CAPS if sandbox_uid() is not None else ()),
        "--chdir",
        TMP,
        "--",
        *drop_privileges_prefix(),
        *command,
    ]


# pip's own configuration, as the operator set it up for this host: where packages come
# from (indexes, local wheels, constraints) and which certificates to trust.
PIP_CONFIG_FILES = (
    "/etc/pip.conf",
    "/etc/xdg/pip/pip.conf",
    "~/.config/pip/pip.conf",
    "~/.pip/pip.conf",
)
CERTIFICATE_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


def pip_configuration() -> tuple[dict[str, str], list[str]]:
    """What ``pip install`` in the sandbox is given of the host: the ``PIP_*``, certificate
    and proxy variables, and read-only the configuration files and the local paths they
    name. The product user's own pip.conf is passed as ``PIP_CONFIG_FILE`` (the sandbox
    has another home)."""
    import configparser

    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("PIP_") or k in CERTIFICATE_ENV or k in PROXY_ENV
    }
    values = [v for k, v in env.items() if k not in PROXY_ENV]
    files = [os.path.expanduser(p) for p in PIP_CONFIG_FILES]
    files = [p for p in files if os.path.isfile(p)]
    for path in files:
        parser = configparser.RawConfigParser()
        with contextlib.suppress(configparser.Error, OSError):
            parser.read(path)
            values += [v for section in parser.sections() for v in parser[section].values()]
    user = [p for p in files if not p.startswith("/etc/")]
    if user and "PIP_CONFIG_FILE" not in env:
        env["PIP_CONFIG_FILE"] = user[0]
    paths = set(files)
    for value in values:
        for token in value.split():
            token = token.removeprefix("file://")
            if token.startswith("/") and os.path.exists(token):
                paths.add(token)
    return env, sorted(paths)


def make_readable(path: Path) -> None:
    """Model files readable (never writable) by the sandbox's unprivileged user."""
    for root, dirs, files in os.walk(path):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)  # noqa: S103 (read-only view)
        for name in files:
            file = os.path.join(root, name)
            if not os.path.islink(file):
                os.chmod(file, os.stat(file).st_mode & 0o755 | 0o444)
    os.chmod(path, 0o755)  # noqa: S103 (the replicas' user reads it, read-only)


def environment(env: dict[str, str]) -> dict[str, str]:
    """A sandboxed process's environment: ``env`` with a private home and temp."""
    return {**env, **PRIVATE_ENV}
