"""What of Ray's output reaches the terminal (vdp_ray/raylog.py), without starting Ray: the driver's Ray loggers
and the printer of forwarded worker lines. A real `vdp train` run is checked in tests/train/test_training.py."""

import io
import logging
from pathlib import Path

import pytest

from vdp_ray.raylog import PRINTER, _ToFile, divert_ray_loggers, sort_worker_output


def ray_consoles() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("ray")]
    return [h for lg in loggers for h in lg.handlers if type(h).__name__ == "PlainRayHandler"]


@pytest.fixture
def diverted(tmp_path):
    """Ray's loggers on this process diverted to tmp_path/logs/ray.log, put back afterwards."""
    file = divert_ray_loggers(tmp_path / "logs" / "ray.log")
    yield file
    for handler in ray_consoles():
        for f in [f for f in handler.filters if isinstance(f, _ToFile)]:
            handler.removeFilter(f)
    file.close()


def test_ray_s_driver_records_go_to_the_file_and_its_errors_to_the_terminal_too(diverted):
    terminal = io.StringIO()
    consoles = ray_consoles()
    assert len(consoles) >= 2, "Ray's and Ray Data's"
    streams = [h.setStream(terminal) for h in consoles]  # Ray's console handlers hold the stderr of their making
    names = ("ray", "ray.data", "ray.train")
    levels = [logging.getLogger(n).level for n in names]  # a Ray started earlier in the session may have raised them
    for name in names:
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        logging.getLogger("ray").warning("Token authentication is enabled for this Ray cluster")
        logging.getLogger("ray.data").warning("Progress bars disabled")
        logging.getLogger("ray.train").error("the controller failed")
    finally:
        for handler, stream in zip(consoles, streams, strict=True):
            handler.setStream(stream)
        for name, level in zip(names, levels, strict=True):
            logging.getLogger(name).setLevel(level)
    err = terminal.getvalue()
    text = Path(diverted.baseFilename).read_text()
    assert "Token authentication" not in err and "Progress bars disabled" not in err
    assert "the controller failed" in err
    for message in ("Token authentication", "Progress bars disabled", "the controller failed"):
        assert text.count(message) == 1, message


def test_forwarded_lines_ours_on_the_terminal_ray_s_in_the_file_cluster_events_as_ray_prints_them(diverted, capsys):
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    printed, saved = [], list(dispatcher.handlers)
    dispatcher.add_handler(PRINTER, printed.append)  # where ray.init puts Ray's own printer
    try:
        assert sort_worker_output(diverted)
        worker = {"pid": 7, "ip": "10.0.0.2", "localhost": "10.0.0.1", "actor_name": "RayTrainWorker", "job": "01"}
        dispatcher.emit(
            {**worker, "is_err": False, "lines": ["[vdp unet3d] step 2/4 | loss 0.5", "Reporting training result 1"]}
        )
        dispatcher.emit({**worker, "is_err": True, "lines": ["[vdp data] skipped clip k1", "FutureWarning: old"]})
        oom = {"pid": "raylet", "ip": "10.0.0.1", "is_err": False, "lines": ["A worker died (out of memory)"]}
        dispatcher.emit(oom)
        crash = {
            **worker,
            "is_err": True,
            "lines": ["Traceback (most recent call last):", '  File "x.py"', "ValueError: bad clip"],
        }
        dispatcher.emit(crash)
    finally:
        dispatcher.handlers = saved
    out, err = capsys.readouterr()
    assert out == "[vdp unet3d] step 2/4 | loss 0.5\n" and err == "[vdp data] skipped clip k1\n"
    assert printed == [oom, crash], "the raylet's lines and a worker's traceback go to Ray's own printer, whole"
    text = Path(diverted.baseFilename).read_text()
    assert "(RayTrainWorker pid=7, ip=10.0.0.2) Reporting training result 1" in text
    assert "(RayTrainWorker pid=7, ip=10.0.0.2) [vdp unet3d] step 2/4" in text and "FutureWarning: old" in text
    assert "ValueError: bad clip" in text
