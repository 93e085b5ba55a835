#!/usr/bin/env bash
# The main job: set up, then open napari with the plugin docked, a synthetic chest X-ray with its
# report, and the default model, which segments it at once.
# Without a display (a headless server) it runs on a virtual one, segments once and saves a
# screenshot to demo.png instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  exec napari-lvit demo "$@"
fi
echo "No display found: running on a virtual display and saving a screenshot to demo.png"
exec xvfb-run -a -s "-screen 0 1280x1024x24" napari-lvit demo --no-run --screenshot demo.png "$@"
