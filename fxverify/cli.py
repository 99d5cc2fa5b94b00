"""The ``fxverify`` command line: parse, validate, call one library function, write.

Every error a user can cause prints one line (``error: ...``) on stderr and exits with code 2.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .errors import FxverifyError

app = typer.Typer(name="fxverify", add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Lower bounds on the robust loss of any classifier trained on a fixed feature extractor.")
EXIT_USER_ERROR = 2


def _console() -> Console:
    return Console(soft_wrap=False, width=max(100, Console().width))


def user_errors(fn):
    """Turn an FxverifyError into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FxverifyError as err:
            print(f"error: {err}", file=sys.stderr)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        print(f"fxverify {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """fxverify: how much robust loss is unavoidable at each cut of a feature extractor."""


ModelArg = Annotated[Path, typer.Argument(help="ONNX model file.", show_default=False)]


def _shape(s) -> str:
    return escape("[" + ", ".join(map(str, s)) + "]")


@app.command()
@user_errors
def inspect(model: ModelArg,
            as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False) -> None:
    """Show the layers, shapes, cuts and parameters of a model, and its agreement with onnxruntime."""
    from .onnx_import import load_model
    from .ir import model_summary

    s = model_summary(load_model(model))
    if as_json:
        print(json.dumps(s, indent=2))
        return
    con = _console()
    con.print(f"[bold]{escape(s['path'])}[/bold]  sha256 {s['sha256'][:16]}…  {escape(s['producer'] or 'unknown producer')}, "
              f"opset {s['opset']}")
    con.print(f"input {escape(repr(s['input_name']))} ONNX shape {_shape(s['onnx_input_shape'])} -> one sample "
              f"{_shape(s['input_shape'])} ({s['input_dim']} values)")
    t = Table(show_edge=False, header_style="bold")
    for col in ("cut", "kind", "ONNX nodes", "in shape", "out shape", "params", "max |IR - ORT|"):
        t.add_column(col, justify="right" if col in ("params", "max |IR - ORT|") else "left")
    per_cut = s["agreement"]["per_cut"]
    t.add_row("input", "", "", "", _shape(s["input_tensor_shape"]), "", f"{per_cut['input']:.2e}")
    for row in s["layers"]:
        t.add_row(row["name"], row["kind"], " ".join(o.split(" ")[0] for o in row["ops"]), _shape(row["in_shape"]),
                  _shape(row["out_shape"]), f"{row['params']:,}", f"{row['max_abs_diff']:.2e}")
    con.print(t)
    con.print(f"cuts: {', '.join(s['cuts'])}")
    con.print(f"parameters: {s['params']:,}")
    r = s["first_affine"]
    if r:
        con.print(f"first affine map {r['name']}: {r['out_dim']} x {r['in_dim']}, rank {r['rank']}")
    a = s["agreement"]
    verdict = "[green]agrees[/green]" if a["ok"] else "[red]DISAGREES[/red]"
    con.print(f"onnxruntime check: {verdict} on {a['n_inputs']} random inputs, max abs difference "
              f"{a['max_abs_diff']:.2e} (tolerance {a['tolerance']:g} x max(1, |value|) per cut)")


def run() -> None:  # console-script entry point
    app()
