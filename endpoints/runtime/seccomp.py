"""The system-call filter of a replica without a network: no connection can be made. Its
sockets come from the host's network namespace and could be re-aimed there, so ``connect``,
TCP Fast Open sends, io_uring and other ABIs' calls are refused with ``EPERM``; receiving
and sending on accepted connections is untouched (docs/security.md, "Threat model"). Classic
BPF built here: libseccomp's Python bindings are not on PyPI. A forked replica installs it
on itself (``install``); bwrap gives a launched one ``program`` before its first instruction.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from dataclasses import dataclass

# struct seccomp_data: the call's number, its ABI, the instruction pointer, six arguments.
NR, ARCH, ARGS = 0, 4, 16
LD_ABS, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
ALLOW = 0x7FFF0000
DENY = 0x00050000 | errno.EPERM  # SECCOMP_RET_ERRNO
MSG_FASTOPEN = 0x20000000
X32_SYSCALL_BIT = 0x40000000
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2


@dataclass(frozen=True)
class Abi:
    audit_arch: int
    connect: int
    # Sending calls and the index of their ``flags`` argument.
    sends: dict[int, int]
    io_uring: tuple[int, ...] = (425, 426, 427)
    # x86-64 also runs x32 programs: their call numbers carry this bit.
    x32: bool = False


ABIS = {
    "x86_64": Abi(0xC000003E, connect=42, sends={44: 3, 46: 2, 307: 3}, x32=True),
    "aarch64": Abi(0xC00000B7, connect=203, sends={206: 3, 211: 2, 269: 3}),
}


def program(machine: str | None = None) -> bytes:
    """The filter as the kernel reads it: 8-byte ``sock_filter`` instructions."""
    machine = machine or platform.machine()
    if machine not in ABIS:
        raise OSError(
            f"no system-call filter for {machine} ({', '.join(ABIS)} have one): "
            "replicas need SERVING_SANDBOX_NETWORK=host here"
        )
    abi = ABIS[machine]
    code: list[tuple[int, int, int, int]] = []

    def emit(op: int, k: int, jt: int = 0, jf: int = 0) -> None:
        code.append((op, jt, jf, k))

    # Jumps are relative; every check below ends in a return, so offsets are local.
    emit(LD_ABS, ARCH)
    emit(JEQ, abi.audit_arch, jt=1)
    emit(RET, DENY)
    emit(LD_ABS, NR)
    if abi.x32:
        emit(JGE, X32_SYSCALL_BIT, jf=1)
        emit(RET, DENY)
    for number in (abi.connect, *abi.io_uring):
        emit(JEQ, number, jf=1)
        emit(RET, DENY)
    for number, flags in abi.sends.items():
        emit(JEQ, number, jf=4)
        emit(LD_ABS, ARGS + 8 * flags)  # the low half of the flags (little-endian)
        emit(JSET, MSG_FASTOPEN, jf=1)
        emit(RET, DENY)
        emit(RET, ALLOW)
    emit(RET, ALLOW)
    return b"".join(struct.pack("HBBI", *instruction) for instruction in code)


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install() -> None:
    """Filter this thread and those it starts from now on (``no_new_privs`` must be set,
    which ``confine.drop`` does). Irrevocable."""
    code = program()
    buffer = ctypes.create_string_buffer(code, len(code))
    prog = _Program(len(code) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        failure = ctypes.get_errno()
        raise OSError(failure, f"seccomp: {os.strerror(failure)}")


def program_fd() -> int:
    """A descriptor to read the program from (bwrap's ``--seccomp``): the read end of a
    pipe already holding it, whole (it is far smaller than a pipe's buffer)."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, program())
    finally:
        os.close(write_end)
    return read_end
