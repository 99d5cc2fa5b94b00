"""The fault sweep's quick subset (tests/fault_sweep.py --quick): bad inputs and faults through
the real command line end in one ``error:`` line and exit 2 or in a checked result; never a
traceback, a silent result or anything else."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SWEEP = Path(__file__).resolve().parent / "fault_sweep.py"


def test_quick_fault_sweep_has_no_traceback_silent_result_or_other():
    res = subprocess.run([sys.executable, str(SWEEP), "--quick", "--jobs", "2"], capture_output=True, text=True,
                         timeout=900)
    last = res.stdout.strip().splitlines()[-1]
    m = re.search(r"(\d+) cases in .*?(\d+) traceback, (\d+) silent result, (\d+) outside access, (\d+) hang, "
                  r"(\d+) other, (\d+) known failure", last)
    assert m, res.stdout[-3000:] + res.stderr[-3000:]
    cases, tb, silent, outside, hang, other, known = map(int, m.groups())
    assert cases >= 35
    assert (tb, silent, outside, hang, other, known) == (0, 0, 0, 0, 0, 0), res.stdout[-5000:]
    assert res.returncode == 0
