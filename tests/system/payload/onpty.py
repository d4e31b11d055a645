"""Run a command on a terminal of its own, then hang that terminal up, as a dropped ssh session does.

    python3 onpty.py FLAG RCFILE TYPESCRIPT COMMAND [ARG...]

The command is the session leader of a new pty (its output kept in TYPESCRIPT). Once FLAG exists the
pty's master is closed: the kernel sends SIGHUP to the session, and later writes to the terminal
fail with EIO. The command's exit status (or -SIGNAL) is written to RCFILE.
"""

import os
import pty
import select
import signal
import sys

flag, rcfile, typescript, *cmd = sys.argv[1:]
pid, fd = pty.fork()
if pid == 0:
    try:
        for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):  # as a login session has them
            signal.signal(s, signal.SIG_DFL)
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
with open(typescript, "ab") as out:
    while not os.path.exists(flag):
        if select.select([fd], [], [], 1)[0]:  # drained, or the command blocks on a full terminal
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the command ended and closed its side
                break
            out.write(data)
            out.flush()
os.close(fd)  # the hang-up
_, status = os.waitpid(pid, 0)
with open(rcfile, "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)}\n")
