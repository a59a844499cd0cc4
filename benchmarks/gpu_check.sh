#!/usr/bin/env bash
# The GPU check in one command, from a copy of the repository's working tree on a GPU machine that has
# torch with CUDA and no network. Usage (from anywhere):
#
#   benchmarks/gpu_check.sh [--official .official/DETRIS] [any benchmarks/gpu_check.py option]
#
# - wheels of missing dependencies (e.g. ftfy, wcwidth, pycocotools) placed in .whl/ are installed
#   offline into a temporary folder first;
# - writes ${GPU_CHECK_OUT:-gpu_check}.json and .md (set GPU_CHECK_OUT to a path prefix to move them);
# - stops the check after ${GPU_CHECK_TIMEOUT:-470} s whatever happens (the JSON is rewritten after
#   every section, so what was measured by then is kept).
# Options given here come after the defaults and replace them: `--device cpu` runs the tiny-scale
# smoke version of every section instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    site=$(mktemp -d)
    "$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out=${GPU_CHECK_OUT:-gpu_check}
exec timeout -k 10 "${GPU_CHECK_TIMEOUT:-470}" "$python" benchmarks/gpu_check.py --device cuda --json "$out.json" --table "$out.md" "$@"
