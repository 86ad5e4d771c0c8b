"""Run a command under a seccomp filter, the way systemd applies a unit's SystemCallFilter= and
RestrictAddressFamilies= (tests/support/sandbox.py writes the spec). Run by the system's python3, which
has Debian's python3-seccomp (libseccomp's own binding):

    python3 seccomp_exec.py SPEC -- COMMAND [ARG...]

SPEC, JSON text: {"allow": [system call names], "errno": 1, "families": [socket families as numbers] or null}.
Every system call not allowed fails with `errno`; with "families", socket() succeeds only for those
families (others fail with EAFNOSUPPORT, as under systemd). Names this kernel or libseccomp does not
know are left out. The filter is loaded just before exec: the command runs under it from its first
instruction. Exit 127 when the command cannot be run.
"""

import errno
import json
import os
import sys

import seccomp


def main(argv: list) -> None:
    text, sep, *command = argv
    assert sep == "--" and command, "usage: seccomp_exec.py SPEC -- COMMAND [ARG...]"
    spec = json.loads(text)
    flt = seccomp.SyscallFilter(defaction=seccomp.ERRNO(spec["errno"]))
    families = spec.get("families")
    for name in spec["allow"]:
        if families is not None and name == "socket":
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
