"""`fanout status --watch` redraws in place every second and exits 0 on Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fanout.console.cli import CLEAR
from tests.support import FAST_POOL, H, worker_env, write_routing

pytestmark = pytest.mark.integration


def test_status_watch_redraws_every_second_and_ctrl_c_exits_0(prefix: str, tmp_path: Path) -> None:
    routing = write_routing(tmp_path, f"pools:\n  alpha: {{{FAST_POOL}}}\nroutes:\n  test.ok: {{alpha: [\"{H}record\"]}}\n")
    screen, errors = tmp_path / "screen.txt", tmp_path / "errors.txt"
    with screen.open("w") as out_file, errors.open("w") as err_file:
        watch = subprocess.Popen([sys.executable, "-m", "fanout.cli", "status", "--watch"],
                                 env=worker_env(prefix, routing), stdout=out_file, stderr=err_file, text=True)
    try:
        deadline = time.monotonic() + 15
        started = None
        # Two frames a second apart (on a loaded machine the first may take a while to come).
        while screen.read_text().count(CLEAR) < 3:
            assert watch.poll() is None and time.monotonic() < deadline, errors.read_text()
            if started is None and CLEAR in screen.read_text():
                started = time.monotonic()
            time.sleep(0.05)
        assert started is not None and time.monotonic() - started >= 1.5  # not a busy loop
        watch.send_signal(signal.SIGINT)  # what Ctrl-C sends
        watch.wait(timeout=10)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    out, err = screen.read_text(), errors.read_text()
    assert watch.returncode == 0, err
    frames = out.split(CLEAR)[1:]
    assert len(frames) >= 2, out  # drawn at start, then again each second
    assert all(frame.lstrip().startswith("pool") and "alpha" in frame for frame in frames)
    assert "Traceback" not in err
