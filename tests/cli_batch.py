"""Many command lines of one program, each run as ``python -m MODULE ARGV`` runs it, in one
process: the libraries are imported once, then each command line runs in a forked child (its
own flags, exit status, stdout and stderr), so a test of 27 bad command lines pays one import
of JAX and transformers, not 27.

    python -m tests.cli_batch MODULE PRELOAD OUT < [[argv...], ...]
    OUT: [{"returncode", "stdout", "stderr"}, ...], one a command line

PRELOAD is a comma-separated list of modules to import first: the program's libraries, never
the program itself (its module runs afresh in each child, as ``-m`` runs it, defining its
flags once).
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import sys
import tempfile
import time
import traceback

TIMEOUT_S = 300


def _child(module: str, argv: list[str], out: str, err: str) -> None:
    """Run ``module`` as ``__main__`` with ``argv``; exit as the interpreter would."""
    os.dup2(os.open(out, os.O_WRONLY), 1)
    os.dup2(os.open(err, os.O_WRONLY), 2)
    sys.argv = [module, *argv]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:  # sys.exit(str) prints the string and exits 1, as Python does
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 (an uncaught error: its traceback, status 1)
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_one(module: str, argv: list[str]) -> dict:
    with tempfile.NamedTemporaryFile("r") as out, tempfile.NamedTemporaryFile("r") as err:
        pid = os.fork()
        if pid == 0:
            _child(module, argv, out.name, err.name)
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                return {"returncode": -9, "stdout": "", "stderr": f"timed out ({TIMEOUT_S} s)"}
            time.sleep(0.05)
        return {"returncode": os.waitstatus_to_exitcode(status), "stdout": out.read(),
                "stderr": err.read()}


def main() -> None:
    module, preload, out = sys.argv[1], [m for m in sys.argv[2].split(",") if m], sys.argv[3]
    cases = json.load(sys.stdin)
    for name in preload:
        importlib.import_module(name)
    with open(out, "w") as f:
        json.dump([run_one(module, argv) for argv in cases], f)


if __name__ == "__main__":
    main()
