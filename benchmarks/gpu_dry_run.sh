#!/usr/bin/env bash
# The GPU check's dry run as the lent GPU machine would run it (`make gpu-dry-run`; docs/kernels.md).
#
# The project's venv holds everything, so a dry run there hides what the machine lacks. This builds a
# throwaway venv with only the machine image's packages (CPU torch standing in for its CUDA one), removes
# pip from it as the image may lack it, downloads the wheels gpu_check.py carries for this Python, and runs
# `gpu_check.py --dry-run` there: the wheels go in without pip, and a missing import, a stage failure or a
# hang fails this script. The venv and the wheels are kept in DIR for the next run (CI's clone is fresh).
#
#   bash benchmarks/gpu_dry_run.sh              # DIR .gpu_dry_run; NM_DRY_RUN_DIR=DIR to change it
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${NM_DRY_RUN_DIR:-.gpu_dry_run}
PYTHON=${PYTHON:-python3}
LIMIT=${NM_DRY_RUN_TIMEOUT:-240}  # seconds for the check itself; it takes about 100 on 2 idle cores
# The machine image's Python packages (KINDS.md of the device tool), less triton: it brings no CPU kernels,
# its wheel is hundreds of MB, and the dry run uses neither torch.compile nor Liger.
TORCH=${TORCH:-torch==2.13.0}
IMAGE="$TORCH transformers sentencepiece tokenizers pyarrow pytest"

venv="$DIR/venv"
stamp="$venv/.image"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$IMAGE" ]; then
    echo "gpu-dry-run: building $venv with only: $IMAGE"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    # shellcheck disable=SC2086  # IMAGE is a list of requirements
    "$venv/bin/python" -m pip install -q --disable-pip-version-check $IMAGE
    "$venv/bin/python" -m pip uninstall -q -y pip  # the wheels stage must work without it
    echo "$IMAGE" >"$stamp"
fi
if "$venv/bin/python" -c "import pip" 2>/dev/null; then
    echo "gpu-dry-run: $venv still has pip; remove $DIR and rerun" >&2
    exit 1
fi

wheels="$DIR/wheels"
rm -rf "$wheels"
"$PYTHON" benchmarks/gpu_check.py --fetch-wheels "$wheels" --python-version host

rm -rf "$DIR/out" "$DIR/work"
status=0
# Nothing from the project's venv leaks in; the check puts the repository and the wheels on the path.
timeout -k 15 "$LIMIT" env -u PYTHONPATH -u VIRTUAL_ENV "$venv/bin/python" benchmarks/gpu_check.py --dry-run \
    --wheels "$wheels" --out "$DIR/out" --work "$DIR/work" --budget-s "$((LIMIT - 20))" || status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "gpu-dry-run: the check hung: killed after ${LIMIT}s; see $DIR/out/gpu_check.log" >&2
elif [ "$status" -ne 0 ]; then
    echo "gpu-dry-run: a stage failed (exit $status): see the table above and $DIR/out/gpu_check.log" >&2
else  # what the stages' statuses do not show: the pip-less install, and the carried ninja first on PATH
    "$PYTHON" - "$DIR/out/gpu_check.json" <<'PY' || status=1
import json, sys
report = json.load(open(sys.argv[1]))
site, env = report["stages"]["wheels"]["results"].get("site", "?"), report["env"]
problems = []
if report["stages"]["wheels"]["results"].get("installer") != "zipfile (no pip)":
    problems.append("the wheels were not installed without pip")
if not str(env.get("ninja")).startswith(site + "/bin/"):
    problems.append(f"the children's ninja is {env.get('ninja')}, not the carried one in {site}/bin")
for problem in problems:
    print(f"gpu-dry-run: {problem}: see {sys.argv[1]}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
fi
exit "$status"
