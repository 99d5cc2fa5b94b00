#!/bin/sh
# The long runs of docs/results.md, cheapest and most needed first; every step resumes where any
# earlier run stopped (budget files in experiments/budgets/), so rerun this script to continue.
# On a shared machine: nohup nice -n 19 sh experiments/schedule.sh > experiments/out/worker.log 2>&1 &
set -e
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
R="$PY experiments/run.py --compute-only"
$R --stages 50 --cuts relu1,relu2 fig5 fig6 fig3 fig4
$R --stages 50 --cuts linear2 fig3 fig4
$R --stages 50 fig3_fmnist fig4_fmnist
$R --stages 50 --cuts linear3 fig3 fig4
$R --stages 100 --cuts relu1,relu2 fig5 fig6 fig3 fig4
$R --stages 100 fig3 fig4
$R fig3_box
