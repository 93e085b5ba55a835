#!/usr/bin/env bash
# The test command: the whole suite on a virtual display (napari needs an OpenGL context).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
exec xvfb-run -a -s "-screen 0 1280x1024x24" python -m pytest -q -ra "$@"
