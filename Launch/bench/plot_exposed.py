#!/usr/bin/env python3
"""Launch/bench/plot_exposed.py: exposed communication per step against link rate, from sim-scaling.csv files.

  python3 Launch/bench/plot_exposed.py OUT.svg LABEL=runs/a/sim-scaling.csv [LABEL=runs/b/sim-scaling.csv ...]

Each CSV is what `Launch/scaling --sim-nodes N` writes (columns link, link_gbps, zero, measured_ms,
measured_exposed_ms); one line per file and ZeRO setting, log-scaled link rate on x. Stdlib only.
"""
import csv, math, sys

if len(sys.argv) < 3 or any("=" not in a for a in sys.argv[2:]):
    sys.exit(__doc__)
series = []
for arg in sys.argv[2:]:
    label, path = arg.split("=", 1)
    rows = list(csv.DictReader(open(path)))
    for zero in sorted({r["zero"] for r in rows}):
        pts = sorted((float(r["link_gbps"]), float(r["measured_exposed_ms"]), float(r["measured_ms"]))
                     for r in rows if r["zero"] == zero)
        series.append((f"{label}{', ZeRO-1' if zero == '1' else ''}", pts))
W, H, left, right, top, bottom = 720, 420, 70, 200, 40, 60
pw, ph = W - left - right, H - top - bottom
xs = [p[0] for _, pts in series for p in pts]
x0, x1 = math.log10(min(xs)) - 0.1, math.log10(max(xs)) + 0.1
ymax = max(p[1] for _, pts in series for p in pts) * 1.1 or 1
step = 10 ** math.floor(math.log10(ymax / 5)); step *= 5 if ymax / step > 25 else 2 if ymax / step > 10 else 1
px = lambda g: left + (math.log10(g) - x0) / (x1 - x0) * pw
py = lambda v: top + ph - v / ymax * ph
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
       '<rect width="100%" height="100%" fill="white"/>',
       f'<text x="{left + pw/2}" y="22" text-anchor="middle" font-size="14">exposed communication per step vs link rate</text>',
       f'<text x="{left + pw/2}" y="{H-12}" text-anchor="middle">link rate per node, Gbit/s (log scale)</text>',
       f'<text x="16" y="{top + ph/2}" transform="rotate(-90 16 {top + ph/2})" text-anchor="middle">ms per step</text>']
v = 0.0
while v <= ymax:
    out.append(f'<line x1="{left}" x2="{left+pw}" y1="{py(v):.1f}" y2="{py(v):.1f}" stroke="#ddd"/>'
               f'<text x="{left-6}" y="{py(v)+4:.1f}" text-anchor="end">{v:.0f}</text>')
    v += step
for g in sorted(set(xs)):
    out.append(f'<line x1="{px(g):.1f}" x2="{px(g):.1f}" y1="{top}" y2="{top+ph}" stroke="#eee"/>'
               f'<text x="{px(g):.1f}" y="{top+ph+16}" text-anchor="middle">{g:g}</text>')
colors = ["#d62728", "#ff9896", "#1f77b4", "#aec7e8", "#2ca02c", "#98df8a"]
for i, (label, pts) in enumerate(series):
    c = colors[i % len(colors)]
    out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="' + " ".join(f"{px(g):.1f},{py(e):.1f}" for g, e, _ in pts) + '"/>')
    for g, e, ms in pts:
        out.append(f'<circle cx="{px(g):.1f}" cy="{py(e):.1f}" r="3" fill="{c}"><title>{label}: {g:g} Gbit/s, {e:.0f} ms exposed of {ms:.0f} ms</title></circle>')
    out.append(f'<rect x="{left+pw+15}" y="{top+10+18*i}" width="12" height="12" fill="{c}"/><text x="{left+pw+32}" y="{top+20+18*i}">{label}</text>')
out.append("</svg>")
open(sys.argv[1], "w").write("\n".join(out))
print(f"wrote {sys.argv[1]}")
