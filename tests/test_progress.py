"""Every command that can run long shows a progress bar with an ETA on a terminal, and none without one.

The commands run in one child process whose stderr is a pseudo-terminal (or, for the
second half, a pipe), on the 900 digits of tests/data (``advmnist.data.mnist.load_split``
replaced in the child) and the tiny trained run.
"""
from __future__ import annotations

import json
import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

SMALL = Path(__file__).with_name("data") / "mnist_small.npz"

MARK = "@@command "

#: One bar of tqdm: "<description>:  40%|####      | 2/5 [00:01<00:02, 1.9it/s]" (ETA after "<").
BAR = re.compile(r"\d+%\|[^|\r\n]*\| *\d+/\d+ *\[[0-9:]+<[0-9:?]+")

DRIVER = r"""
import json, sys
import numpy as np
import advmnist.data.mnist
from advmnist.data.mnist import Split

small = np.load(sys.argv[1])
def split(name, *args, rows=None, **kwargs):
    images = small[f"{name}_images"].astype(np.float32) / 255.0
    labels = small[f"{name}_labels"].astype(np.int64)
    rows = rows if rows is not None else slice(None)
    return Split(images[rows], labels[rows])
advmnist.data.mnist.load_split = split
advmnist.data.mnist.load_train_test = lambda *args, **kwargs: (split("train"), split("test"))
advmnist.data.mnist.default_remote_sources = lambda: []  # never the full MNIST

from advmnist.cli import main
import time
for name, args in json.loads(sys.argv[2]):
    print("@@command " + name, file=sys.stderr, flush=True)
    began = time.time()
    try:
        main(args, standalone_mode=False)
    except SystemExit as stop:
        if stop.code:
            raise
    print(f"@@seconds {time.time() - began:.1f}", file=sys.stderr, flush=True)
"""


def commands(run, other, out):
    """Each long command with settings small enough for a test, but with several units of work."""
    model = ["--model", str(run)]
    return [
        ("train", ["train", "--epochs", "1", "--batch-size", "64", "--run-dir", str(out / "trained")]),
        ("attack", ["attack", *model, "--reg", "l2", "--count", "4", "--steps", "200", "--out", str(out)]),
        ("minimal", ["minimal", *model, "--count", "4", "--steps", "20", "--starts", "1", "--out", str(out)]),
        ("robustness", ["robustness", *model, "--count", "8", "--eps", "0,0.2", "--steps", "10", "--out",
                        str(out)]),
        ("matrix", ["matrix", *model, "--per-class", "1", "--steps", "20", "--out", str(out)]),
        ("tradeoff", ["tradeoff", *model, "--count", "4", "--steps", "20", "--weights", "0.01,0.1", "--out",
                      str(out)]),
        ("universal", ["universal", *model, "--target", "3", "--steps", "20", "--out", str(out)]),
        ("transfer", ["transfer", "--model", str(run), "--evaluate-on", str(other), "--count", "8", "--steps", "10",
                      "--out", str(out)]),
        ("immunize universal", ["immunize", "universal", *model, "--target", "3", "--rounds", "1", "--train-steps", "20",
                      "--noise-steps", "20", "--refresh-every", "0", "--run-dir", str(out / "immune"), "--out",
                      str(out)]),
        ("immunize pgd", ["immunize", "pgd", *model, "--epochs", "1", "--eps", "0.1",
                                    "--pgd-steps", "2", "--evaluate", "0", "--run-dir", str(out / "pgd"), "--out",
                                    str(out)]),
    ]


def run_driver(tmp_path, args, terminal: bool) -> dict[str, str]:
    """Run the commands in one child; its stderr, split per command."""
    code = [sys.executable, "-c", DRIVER, str(SMALL), json.dumps(args)]
    env = {**os.environ, "MPLBACKEND": "Agg", "ADVMNIST_CACHE": str(tmp_path / "empty-cache"),
           "TF_CPP_MIN_LOG_LEVEL": "2", "COLUMNS": "120"}
    if terminal:
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # rows, columns
        child = subprocess.Popen(code, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower,
                                 env=env, cwd=tmp_path)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(leader)
        status = child.wait(timeout=600)
        text = b"".join(chunks).decode(errors="replace")
    else:
        done = subprocess.run(code, stdin=subprocess.DEVNULL, capture_output=True, env=env, cwd=tmp_path,
                              timeout=600)
        status, text = done.returncode, done.stderr.decode(errors="replace")
    assert status == 0, text[-3000:]
    parts = text.split(MARK)[1:]
    return {part.split("\r\n" if terminal else "\n", 1)[0].strip(): part for part in parts}


@pytest.mark.slow
def test_every_long_command_shows_progress_on_a_terminal_and_none_in_a_pipe(tiny_run, second_model, tmp_path):
    args = commands(tiny_run[0], second_model.path.parent, tmp_path / "out")
    (tmp_path / "out").mkdir()
    shown = run_driver(tmp_path, args, terminal=True)
    assert sorted(shown) == sorted(name for name, _ in args)
    missing = [name for name, text in shown.items() if not BAR.search(text)]
    assert not missing, {name: shown[name][-600:] for name in missing}

    quiet_args = [(name, [a if a != str(tmp_path / "out") else str(tmp_path / "quiet") for a in cmd])
                  for name, cmd in args if name in ("attack", "robustness", "universal")]
    (tmp_path / "quiet").mkdir()
    piped = run_driver(tmp_path, quiet_args, terminal=False)
    assert sorted(piped) == sorted(name for name, _ in quiet_args)
    assert not [name for name, text in piped.items() if BAR.search(text) or "%|" in text], piped
