"""The package as a notebook user meets it: importing it changes nothing; the README's example runs."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"


def test_importing_advmnist_changes_no_global_state():
    code = ("import os, sys\n"
            "before = dict(os.environ)\n"
            "import advmnist, advmnist.cli, advmnist.attacks, advmnist.defences.universal_immunization, advmnist.model.training, advmnist.report.figures\n"
            "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())\n"
            "assert 'tensorflow' not in sys.modules and 'matplotlib' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _readme_python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "the README shows one Python example"
    return blocks[0]


@pytest.mark.slow
def test_the_readme_python_example_runs(tiny_run, tmp_path):
    code = _readme_python_example().replace('"runs/cnn"', repr(str(tiny_run[0])))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "the example prints its results"
