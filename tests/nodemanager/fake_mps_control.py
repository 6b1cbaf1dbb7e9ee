"""A stand-in for `nvidia-cuda-mps-control`, run as a real program (no GPU, no CUDA).

- `-d`: starts a daemon in the background (a forked, detached process) listening on
  `$CUDA_MPS_PIPE_DIRECTORY/control`, and returns once it listens. It refuses (exit 1) when a
  daemon already answers there, as the real one does.
- no argument: sends each line of stdin to the daemon and prints its answers; exits 1 with
  "Cannot find MPS control daemon process" when none answers.
- the daemon answers `get_server_list` (nothing: no server without clients) and `quit`
  (then exits).

Everything it is asked is appended to `$CUDA_MPS_LOG_DIRECTORY/control.log` as lines
`start pid=<pid> CUDA_VISIBLE_DEVICES=<value>`, `command <line>` and `exit`, so tests read what
the node manager did.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path


def _record(line: str) -> None:
    with open(Path(os.environ["CUDA_MPS_LOG_DIRECTORY"]) / "control.log", "a") as out:
        out.write(line + "\n")


def _control_path() -> Path:
    return Path(os.environ["CUDA_MPS_PIPE_DIRECTORY"]) / "control"


def _ask(lines: list[str]) -> list[str] | None:
    """Send lines to the daemon; its answers, None when none answers."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(str(_control_path()))
    except OSError:
        client.close()
        return None
    with client:
        client.sendall("".join(line + "\n" for line in lines).encode())
        client.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := client.recv(4096):
            data += chunk
    return data.decode().splitlines()


def _serve(listener: socket.socket) -> None:
    while True:
        connection, _ = listener.accept()
        with connection:
            data = b""
            while chunk := connection.recv(4096):
                data += chunk
            quit_now = False
            for line in data.decode().splitlines():
                _record(f"command {line}")
                if line == "quit":
                    quit_now = True
            connection.sendall(b"ok\n")
        if quit_now:
            with contextlib.suppress(OSError):
                _control_path().unlink()
            _record("exit")
            os._exit(0)


def _daemonize() -> int:
    if _ask([]) is not None:
        print("An instance of this daemon is already running", file=sys.stderr)
        return 1
    path = _control_path()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by a daemon that died
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    log = Path(os.environ["CUDA_MPS_LOG_DIRECTORY"]) / "control.log"
    starts = log.read_text().count("start pid=") if log.exists() else 0
    if os.fork() == 0:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        _record(f"start pid={os.getpid()} CUDA_VISIBLE_DEVICES={visible}")
        _serve(listener)
    listener.close()
    # return once the daemon has recorded its start (it listens already)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().count("start pid=") > starts:
            return 0
        time.sleep(0.005)
    return 1


def main(argv: list[str]) -> int:
    if argv == ["-d"]:
        return _daemonize()
    if argv:
        print(f"unknown arguments {argv}", file=sys.stderr)
        return 2
    answers = _ask(sys.stdin.read().splitlines())
    if answers is None:
        print("Cannot find MPS control daemon process", file=sys.stderr)
        return 1
    for answer in answers:
        print(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
