#!/usr/bin/env python3
"""Draws a gpt2-dist trace.json (train --trace-steps) as an SVG timeline, one pair of lanes per rank: the compute
track (spans coloured by kind: forward, backward, waits, optimizer, ...) and the communication track (each bucket's
collective). No dependencies. A stand-in for a Perfetto screenshot where no browser is at hand.

    python3 Launch/bench/plot_trace.py runs/sim-trace/trace.json trace.svg
"""
import json, sys
from html import escape

trace = json.load(open(sys.argv[1]))
spans = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
ranks = sorted({e["pid"] for e in spans})
steps = [e for e in spans if e["cat"] == "step"]
t0 = min(e["ts"] for e in steps)
t1 = max(e["ts"] + e["dur"] for e in steps)
colors = {"forward": "#1f77b4", "backward": "#ff7f0e", "recompute": "#17becf", "wait": "#d62728", "data": "#8c564b",
          "compute": "#7f7f7f", "comm": "#2ca02c"}
special = {"optimizer": "#9467bd"}
left, width, lane, gap = 160, 1000, 26, 18
height = 60 + len(ranks) * (2 * lane + gap) + 60
x = lambda t: left + (t - t0) / (t1 - t0) * width
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 30}" height="{height}" font-family="sans-serif" font-size="12">',
       '<rect width="100%" height="100%" fill="white"/>',
       f'<text x="{left + width / 2}" y="20" text-anchor="middle" font-size="15">{escape(", ".join(s["name"] for s in steps if s["pid"] == ranks[0]))}'
       f' on {len(ranks)} ranks</text>']
for i, rank in enumerate(ranks):
    y = 40 + i * (2 * lane + gap)
    for k, (tid, label) in enumerate([(1, "compute"), (2, "communication")]):
        yy = y + k * lane
        out.append(f'<text x="{left - 8}" y="{yy + lane / 2 + 4}" text-anchor="end">rank {rank} {label}</text>')
        out.append(f'<rect x="{left}" y="{yy}" width="{width}" height="{lane - 4}" fill="#f4f4f4"/>')
        for e in spans:
            if e["pid"] != rank or e["tid"] != tid or e["cat"] == "step" or e["ts"] + e["dur"] < t0 or e["ts"] > t1:
                continue
            color = special.get(e["name"], colors.get(e["cat"], "#bbbbbb"))
            w = max(0.5, x(e["ts"] + e["dur"]) - x(e["ts"]))
            out.append(f'<rect x="{x(e["ts"]):.2f}" y="{yy}" width="{w:.2f}" height="{lane - 4}" fill="{color}">'
                       f'<title>{escape(e["name"])} {e["dur"] / 1000:.2f} ms</title></rect>')
axis_y = 40 + len(ranks) * (2 * lane + gap)
span_ms = (t1 - t0) / 1000
step = next(s for s in [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000] if span_ms / s <= 12)
for k in range(int(span_ms // step) + 1):
    xx = x(t0 + k * step * 1000)
    out.append(f'<line x1="{xx:.1f}" y1="{axis_y - 8}" x2="{xx:.1f}" y2="{axis_y - 2}" stroke="black"/>')
    out.append(f'<text x="{xx:.1f}" y="{axis_y + 10}" text-anchor="middle">{k * step}</text>')
out.append(f'<text x="{left + width / 2}" y="{axis_y + 28}" text-anchor="middle">ms since the step began</text>')
lx = left
for name, color in [("forward", colors["forward"]), ("backward", colors["backward"]), ("optimizer", special["optimizer"]),
                    ("waits", colors["wait"]), ("other compute", colors["compute"]), ("bucket collective", colors["comm"])]:
    out.append(f'<rect x="{lx}" y="{axis_y + 38}" width="14" height="10" fill="{color}"/><text x="{lx + 18}" y="{axis_y + 47}">{name}</text>')
    lx += 40 + 7 * len(name)
out.append("</svg>")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
