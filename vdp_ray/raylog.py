"""Ray's own output in the run folder, our lines on the terminal.

Ray and its libraries write a great deal to the terminal of the command that started them: the Train controller's
resource requests, a line per report with the checkpoint's full path, Ray Data's notices, the token-auth notice.
`vdp train`, `vdp tune` and `vdp demo` send it to a file in the run folder (``logs/ray.log``) and keep the
terminal for our lines; ``--verbose`` leaves Ray's output where Ray prints it.

Our workers' lines travel as Ray's do: a worker prints them to its stdout, Ray's log monitor ships them to the
driver, and the driver's printer (``log_to_driver``) writes them out. So forwarding stays on and the printer is
replaced by one that sorts: lines tagged ``[vdp`` to the terminal (without Ray's ``(RayTrainWorker pid=...)``
prefix), the raylet's and the autoscaler's (a worker killed for memory, a request no node can hold) to the terminal
as Ray prints them, every worker line to the file. On the driver, the records of Ray's own loggers go to the file,
and those at ERROR or above to the terminal as well. What no logger carries still reaches the terminal: our own
warnings and errors, and the core worker's C++ lines on the driver's stderr.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

TAG = "[vdp "  # how every line of ours starts: runlog, the training loop, the data pipeline, tune, the demo
PRINTER = "ray_print_logs"  # the name of Ray's printer of worker output in its stream dispatcher (Ray 2.60)
CLUSTER_EVENTS = ("raylet", "autoscaler")  # the "pid" of lines about the cluster rather than from a worker


def ray_log(run_dir: str | Path) -> Path:
    """Where a run folder keeps Ray's own output."""
    return Path(run_dir) / "logs" / "ray.log"


class _ToFile(logging.Filter):
    """On a console handler of Ray's loggers: every record to the file, only errors on to the terminal."""

    def __init__(self, file: logging.FileHandler):
        super().__init__()
        self.file = file

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "vdp_filed", False):  # once, though it may pass a console of ray.train and of ray
            self.file.handle(record)
            record.vdp_filed = True
        return record.levelno >= logging.ERROR


def divert_ray_loggers(path: Path) -> logging.FileHandler:
    """Ray's loggers on this process write to ``path`` from now on (errors to the terminal too). Called before
    ray.init, whose token-auth notice is one of them; returns the file for ``sort_worker_output``."""
    import ray.data  # noqa: F401  (sets up Ray Data's own console handler, diverted here like the rest)

    path.parent.mkdir(parents=True, exist_ok=True)
    file = logging.FileHandler(path)
    file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    file.stream.write(f"---- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)} (pid {os.getpid()})\n")
    _divert_consoles(file)
    return file


def _divert_consoles(file: logging.FileHandler) -> None:
    names = [n for n in list(logging.root.manager.loggerDict) if n == "ray" or n.startswith("ray.")]
    for name in names:
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
                continue
            diverted = [f for f in handler.filters if isinstance(f, _ToFile)]
            for f in diverted:  # an earlier Ray of this process: its records now go to this run's file
                f.file = file
            if not diverted:
                handler.addFilter(_ToFile(file))


def sort_worker_output(file: logging.FileHandler) -> bool:
    """After ray.init: worker output reaches the terminal only where it is ours (or about the cluster); all of it
    goes to ``file``. False where Ray has no printer to replace (log_to_driver off, another Ray version)."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return False
    ray_print = dict(dispatcher.handlers).get(PRINTER)
    if ray_print is None:
        return False
    _divert_consoles(file)  # loggers Ray set up while it started

    def sort(batch: dict) -> None:
        if batch.get("pid") in CLUSTER_EVENTS:
            ray_print(batch)
            return
        lines = batch.get("lines") or []
        if batch.get("is_err") and any(_is_error(line) for line in lines):  # a worker's traceback: shown whole
            ray_print(batch)
            _write_lines(file, batch, lines)
            return
        ours = [line for line in lines if line.startswith(TAG)]
        if ours:
            print("\n".join(ours), file=sys.stderr if batch.get("is_err") else sys.stdout, flush=True)
        _write_lines(file, batch, lines)

    dispatcher.remove_handler(PRINTER)
    dispatcher.add_handler(PRINTER, sort)  # under Ray's name: ray.shutdown() removes it as it would its own
    return True


def _is_error(line: str) -> bool:
    """A line of a Python traceback's head or tail ("Traceback ...", "ValueError: ..."): errors reach the terminal."""
    head = line.split(":", 1)[0]
    return line.startswith("Traceback (most recent call last)") or (
        ":" in line and head.isidentifier() and head.endswith(("Error", "Exception"))
    )


def _write_lines(file: logging.FileHandler, batch: dict, lines: list[str]) -> None:
    """Worker lines as Ray prints them: "(RayTrainWorker pid=123) text", the node's address when not this one."""
    who = batch.get("actor_name") or batch.get("task_name") or ""
    ip = batch.get("ip")
    where = f"({who + ' ' if who else ''}pid={batch.get('pid')}{'' if ip == batch.get('localhost') else f', ip={ip}'})"
    file.acquire()
    try:
        file.stream.writelines(f"{where} {line}\n" for line in lines)
        file.flush()
    finally:
        file.release()
