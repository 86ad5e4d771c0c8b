"""Run a command under a seccomp filter, the way systemd applies a unit's SystemCallFilter= and
RestrictAddressFamilies= (tests/support/sandbox.py writes the spec). Run by the system's python3, which
has Debian's python3-seccomp (libseccomp's own binding):

    python3 seccomp_exec.py SPEC -- COMMAND [ARG...]

SPEC, JSON text: {"allow": [system call names], "errno": 1, "families": [socket families as numbers] or null,
"mdwe": true or false}. Every system call not allowed fails with `errno`; with "families", socket()
succeeds only for those families (others fail with EAFNOSUPPORT, as under systemd); with "mdwe"
(MemoryDenyWriteExecute=), as systemd does it: mmap() of memory both writable and executable, and
mprotect()/pkey_mprotect() adding execute, fail with EPERM. Names this kernel or libseccomp does not
know are left out. The filter is loaded just before exec: the command runs under it from its first
instruction. Exit 127 when the command cannot be run.
"""

import errno
import json
import mmap
import os
import sys

import seccomp


def main(argv: list) -> None:
    text, sep, *command = argv
    assert sep == "--" and command, "usage: seccomp_exec.py SPEC -- COMMAND [ARG...]"
    spec = json.loads(text)
    flt = seccomp.SyscallFilter(defaction=seccomp.ERRNO(spec["errno"]))
    families = spec.get("families")
    mdwe = spec.get("mdwe", False)
    write_exec = mmap.PROT_WRITE | mmap.PROT_EXEC
    for name in spec["allow"]:
        if families is not None and name == "socket":
            continue
        if mdwe and name in ("mmap", "mmap2"):
            for allowed in (0, mmap.PROT_WRITE, mmap.PROT_EXEC):  # not both
                flt.add_rule(seccomp.ALLOW, name, seccomp.Arg(2, seccomp.MASKED_EQ, write_exec, allowed))
            continue
        if mdwe and name in ("mprotect", "pkey_mprotect"):
            flt.add_rule(seccomp.ALLOW, name, seccomp.Arg(2, seccomp.MASKED_EQ, mmap.PROT_EXEC, 0))
            continue
        if mdwe and name == "shmat":
            flt.add_rule(seccomp.ALLOW, name, seccomp.Arg(2, seccomp.MASKED_EQ, 0o100000, 0))  # not SHM_EXEC
            continue
        try:
            flt.add_rule(seccomp.ALLOW, name)
        except (RuntimeError, ValueError):
            pass  # not a system call of this architecture
    if families is not None:
        for family in families:
            flt.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, family))
        if "socket" in spec["allow"]:
            # any other family: EAFNOSUPPORT, systemd's answer (one rule per range between the allowed)
            edges = sorted(set(families))
            start = 0
            for family in edges + [64]:
                for value in range(start, family):
                    flt.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, value))
                start = family + 1
    flt.load()
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"seccomp_exec: cannot run {command[0]}: {exc}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
