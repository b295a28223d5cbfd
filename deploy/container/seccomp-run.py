#!/usr/bin/env python3
"""Runs a command under deploy/container/seccomp-ringlb.json, enforced by libseccomp (the
same filter a container runtime builds from the profile), for the tests and for trying a
profile change without a container runtime.

    python3 deploy/container/seccomp-run.py PROFILE.json -- ringlb serve --config ringlb.toml

Debian: python3-seccomp.
"""
import errno, json, os, sys

import seccomp

args = sys.argv[1:]
if len(args) < 3 or args[1] != "--":
    sys.exit("usage: seccomp-run.py PROFILE.json -- COMMAND [ARGS...]")
profile = json.load(open(args[0]))
assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
f = seccomp.SyscallFilter(seccomp.ERRNO(profile.get("defaultErrnoRet", errno.EPERM)))
for group in profile["syscalls"]:
    assert group["action"] == "SCMP_ACT_ALLOW"
    for name in group["names"]:
        try:
            f.add_rule(seccomp.ALLOW, name)
        except (RuntimeError, ValueError, OSError):
            pass  # not a syscall of this architecture
f.load()
os.execvp(args[2], args[2:])
