#!/usr/bin/env bash
# Launch/bench/trace_screenshot.sh: a PNG of a gpt2-dist trace.json (train --trace-steps) in Chrome's own trace
# viewer (Catapult, the frontend of chrome://tracing), rendered by headless Chromium, with no network beyond apt.
#
#   bash Launch/bench/trace_screenshot.sh runs/sim-trace/trace.json trace.png [FROM_S TO_S]
#
# FROM_S TO_S: the time window to show, in seconds of the trace (default: the traced steps).
# Needs chromium (apt-get install chromium). The viewer comes from Debian's golang-1.19-src package, which ships
# Catapult's vulcanized trace_viewer_full.html and webcomponents.min.js (BSD; go tool trace embeds them):
# `apt-get download` fetches the .deb into a cache directory and only those two files are extracted. The page that
# embeds them follows Catapult's "embedding the trace viewer" instructions.
set -euo pipefail
trace=${1:?usage: trace_screenshot.sh TRACE.json OUT.png [FROM_S TO_S]}
out=${2:?usage: trace_screenshot.sh TRACE.json OUT.png [FROM_S TO_S]}
from=${3:-}; to=${4:-}
[[ -r "$trace" ]] || { echo "trace_screenshot.sh: cannot read $trace" >&2; exit 1; }
command -v chromium >/dev/null || { echo "trace_screenshot.sh: no chromium (apt-get install chromium)" >&2; exit 1; }

cache=${XDG_CACHE_HOME:-$HOME/.cache}/gpt2-dist/trace-viewer
if [[ ! -f "$cache/trace_viewer_full.html" ]]; then
    mkdir -p "$cache/deb"
    (cd "$cache/deb" && apt-get download golang-1.19-src >/dev/null 2>&1) ||
        { echo "trace_screenshot.sh: apt-get download golang-1.19-src failed" >&2; exit 1; }
    dpkg-deb --fsys-tarfile "$cache"/deb/golang-1.19-src_*.deb |
        tar -x -C "$cache" --strip-components=8 ./usr/share/go-1.19/src/cmd/trace/static/trace_viewer_full.html \
            ./usr/share/go-1.19/src/cmd/trace/static/webcomponents.min.js
    rm -rf "$cache/deb"
fi

page=$(mktemp -d)
trap 'rm -rf "$page"' EXIT
cp "$cache/trace_viewer_full.html" "$cache/webcomponents.min.js" "$page/"
python3 - "$trace" "$page/viewer.html" "$from" "$to" <<'EOF'
import json, sys
trace_path, page, start, end = sys.argv[1:5]
trace = json.load(open(trace_path))
steps = [e for e in trace["traceEvents"] if e.get("ph") == "X" and e.get("cat") == "step"]
t0 = min(e["ts"] for e in trace["traceEvents"] if "ts" in e)
# The window in the viewer's milliseconds (it counts from the trace's first event).
lo = float(start) * 1e3 if start else (min(e["ts"] for e in steps) - t0) / 1e3
hi = float(end) * 1e3 if end else (max(e["ts"] + e["dur"] for e in steps) - t0) / 1e3
pad = (hi - lo) * 0.02
html = """<!DOCTYPE html>
<html><head><meta charset="utf-8">
<script src="webcomponents.min.js"></script>
<link rel="import" href="trace_viewer_full.html">
<style>html, body { margin: 0; height: 100%%; } tr-ui-timeline-view { height: 100%%; }</style>
</head><body>
<script>
const traceText = %s;
window.addEventListener('WebComponentsReady', () => {
  const model = new tr.Model();
  new tr.importer.Import(model).importTraces([traceText]);
  const viewer = document.createElement('tr-ui-timeline-view');
  const container = document.createElement('track-view-container');
  container.id = 'track_view_container';
  viewer.track_view_container = container;
  Polymer.dom(viewer).appendChild(container);
  document.body.appendChild(viewer);
  viewer.model = model;
  viewer.viewTitle = %s;
  setTimeout(() => {
    // The polyfill's warning bar says nothing about the trace.
    // Nor do the selection panel below the tracks and its drag handle: the tracks take the page.
    for (const name of ['tr-ui-b-info-bar', 'tr-ui-a-analysis-view', 'tr-ui-b-drag-handle', 'tr-ui-b-mouse-mode-selector']) {
      Array.prototype.forEach.call(document.querySelectorAll(name), e => e.style.display = 'none');
    }
    const viewport = viewer.trackView.viewport;
    const transform = new tr.ui.TimelineDisplayTransform();
    transform.xSetWorldBounds(%f, %f, viewport.modelTrackContainer.canvas.clientWidth);
    viewport.setDisplayTransformImmediately(transform);
  }, 1500);  // after the viewer's own first fit to the whole trace
});
</script>
</body></html>
""" % (json.dumps(json.dumps(trace)), json.dumps(trace_path.split("/")[-1]), lo - pad, hi + pad)
open(page, "w").write(html)
EOF
chromium --headless=new --no-sandbox --allow-file-access-from-files --hide-scrollbars --window-size=1600,330 \
    --enable-logging=stderr --v=0 --virtual-time-budget=20000 --screenshot="$(realpath -m "$out")" "file://$page/viewer.html" 2>&1 |
    { grep "CONSOLE" | grep -v "slider-vertical" >&2 || true; }
[[ -s "$out" ]] || { echo "trace_screenshot.sh: chromium wrote no screenshot" >&2; exit 1; }
echo "wrote $out"
