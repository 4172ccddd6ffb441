"""Run a command in a pseudo-terminal as a person would, press keys, report what happened.

    pty_keys.py WAIT_FOR KEYS -- COMMAND ARGS...

Waits (up to 30 s) until the screen shows WAIT_FOR ("shown": false if it never does, or the
command ended first), writes KEYS (Python escapes, e.g. '\\x03' for
Ctrl-C), then waits up to 10 s for the command to exit. Prints one JSON object: the exit code,
seconds from the keys to the exit, whether the terminal was given back (alternate screen left,
cursor shown, canonical mode and echo on again) and the tail of the output. Standard library only.
"""
import fcntl
import json
import os
import pty
import select
import struct
import sys
import termios
import time


def main():
    wait_for, keys = sys.argv[1].encode(), sys.argv[2].encode().decode("unicode_escape").encode()
    argv = sys.argv[sys.argv.index("--") + 1 :]
    pid, fd = pty.fork()
    if pid == 0:
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 110, 0, 0))
        os.execvp(argv[0], argv)
    out = b""

    def read(until):
        """True once the screen shows WAIT_FOR; False if the command ended or `until` passed first."""
        nonlocal out
        while time.time() < until:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    return False
                if not chunk:
                    return False
                out += chunk
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return False
            if wait_for and wait_for in out:
                return True
        return False

    shown = read(time.time() + 30)
    pressed = time.time()
    os.write(fd, keys)
    wait_for = b""
    code = None
    deadline = time.time() + 10
    while time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                out += os.read(fd, 65536)
            except OSError:
                pass
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
    took = time.time() - pressed
    if code is None:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    lflag = termios.tcgetattr(fd)[3]
    tail = out[-400:]
    print(json.dumps({
        "shown": shown,
        "exit": code,
        "seconds": round(took, 2),
        "left_alternate_screen": b"\x1b[?1049l" in tail,
        "cursor_shown": b"\x1b[?25h" in tail,
        "canonical_and_echo": bool(lflag & termios.ICANON) and bool(lflag & termios.ECHO),
        "tail": tail.decode("utf-8", "replace"),
    }))


main()
