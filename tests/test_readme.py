"""Every Python block of the README runs as written (from the repository root, in order, in one
namespace), and the CLI's help agrees with the README's command table."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT

README = ROOT / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_python_blocks_run_as_written(tmp_path, monkeypatch, capsys):
    blocks = _blocks("python")
    assert len(blocks) >= 4
    monkeypatch.chdir(ROOT)
    import shutil

    shutil.rmtree(ROOT / "out" / "readme_example", ignore_errors=True)
    ns: dict = {"__name__": "readme"}
    for k, code in enumerate(blocks):
        exec(compile(code, f"README.md python block {k + 1}", "exec"), ns)
    out = capsys.readouterr().out
    assert "found" in out and "BoundRecord(eps=4.0" in out
    shutil.rmtree(ROOT / "out" / "readme_example", ignore_errors=True)


def test_json_block_is_the_shipped_spec():
    import json

    (doc,) = [json.loads(b) for b in _blocks("json")]
    shipped = json.loads((ROOT / "specs" / "mnist_3v7.json").read_text())
    shipped.pop("description")
    assert doc.pop("time_budget") is None and doc == shipped


def test_help_and_readme_agree_on_the_options():
    table = README.read_text().split("## Command line", 1)[1].split("\n## ", 1)[0]
    env = dict(os.environ, COLUMNS="200")
    for cmd in ("bound", "distances", "collide", "check", "compare", "gap", "solvers", "inspect"):
        row = next(line for line in table.splitlines() if line.startswith(f"| `fxverify {cmd} "))
        usage = re.split(r"(?<!\\)\|", row)[1]
        res = subprocess.run([sys.executable, "-m", "fxverify", cmd, "--help"], capture_output=True, text=True,
                             env=env, timeout=120)
        assert res.returncode == 0, res.stderr
        flags = set(re.findall(r"--[a-z][a-z-]*", res.stdout)) - {"--help"}
        documented = set(re.findall(r"--[a-z][a-z-]*", usage))
        if cmd == "distances":  # documented as "the options of bound but --eps, --exhaustive, --select-pairs"
            bound_row = next(line for line in table.splitlines() if line.startswith("| `fxverify bound "))
            documented = set(re.findall(r"--[a-z][a-z-]*", re.split(r"(?<!\\)\|", bound_row)[1]))
            documented -= {"--eps", "--exhaustive", "--select-pairs"}
        assert documented <= flags, (cmd, documented - flags)
        assert flags <= documented, (cmd, flags - documented)
