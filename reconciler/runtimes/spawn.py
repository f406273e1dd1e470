"""Launcher: ``python -I -S reconciler/runtimes/spawn.py LOG -- ARGV...``.

Standard library only: it runs as a file, without site-packages, to start fast.

Starts ARGV detached (new session, stdin from /dev/null, output appended to
LOG, 0600), prints its pid and exits, leaving the child to init.
"""

from __future__ import annotations

import os
import subprocess
import sys


def main(args: list[str]) -> int:
    if len(args) < 3 or args[1] != "--":
        print("usage: spawn.py LOG -- ARGV...", file=sys.stderr)
        return 2
    log_path, argv = args[0], args[2:]
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                 start_new_session=True, close_fds=True)
    except OSError as exc:
        print(f"cannot start {argv[0]}: {exc.strerror}", file=sys.stderr)
        return 1
    finally:
        os.close(fd)
    print(child.pid, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
