"""Run a command under a seccomp filter like the one systemd builds from a unit's SystemCallFilter=: the
named system calls allowed, every other one failing with EPERM (the unit's SystemCallErrorNumber=EPERM).

    python tests/seccomp_exec.py ALLOWED_FILE COMMAND [ARG...]

ALLOWED_FILE holds system call names, one per line. Uses the C library libseccomp (systemd's own) through
ctypes; the filter outlives execve, as under systemd. For tests only: a running systemd is not available
in CI, so `tests/integration/test_unit_syscall_filter.py` applies the unit's filter this way.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from pathlib import Path

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO_BASE = 0x00050000


def main() -> None:
    allowed_file, *command = sys.argv[1:]
    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    context = lib.seccomp_init(SCMP_ACT_ERRNO_BASE | errno.EPERM)
    if not context:
        sys.exit("seccomp_init failed")
    for name in Path(allowed_file).read_text().split():
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:  # not a system call of this architecture
            continue
        if lib.seccomp_rule_add(context, SCMP_ACT_ALLOW, number, 0) != 0:
            sys.exit(f"seccomp_rule_add {name} failed")
    if lib.seccomp_load(context) != 0:
        sys.exit("seccomp_load failed")
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
