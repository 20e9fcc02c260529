#!/usr/bin/env bash
# Render a tabor-tf report.html (or compare.html) in headless Chromium and save a screenshot.
#
#   benchmarks/render_report.sh scan-model-tabor/report.html [out.png] [WIDTHxHEIGHT]
#
# Checks that the self-contained page renders without network access: Chromium runs with
# networking features off, so any external resource would simply be missing from the picture.
# Needs Chromium: apt-get update && apt-get install -y chromium
# (the test suite does not need it; this is the manual / CI-optional render check).
set -euo pipefail
page="${1:?usage: render_report.sh PAGE.html [out.png] [WIDTHxHEIGHT]}"
out="${2:-${page%.html}.png}"
size="${3:-1200x1600}"
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
if [[ -z "$browser" ]]; then
  echo "render_report.sh: Chromium not found (apt-get install -y chromium)" >&2
  exit 2
fi
[[ -f "$page" ]] || { echo "render_report.sh: no such page: $page" >&2; exit 2; }
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
abs="$(cd "$(dirname "$page")" && pwd)/$(basename "$page")"
out_abs="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
  --user-data-dir="$profile" --screenshot="$out_abs" --window-size="${size/x/,}" \
  "file://$abs" >/dev/null 2>&1
[[ -s "$out_abs" ]] || { echo "render_report.sh: Chromium wrote no screenshot" >&2; exit 1; }
echo "$out_abs"
