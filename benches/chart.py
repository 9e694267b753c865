#!/usr/bin/env python3
"""Bar chart of throughput and p99 per configuration from mcp-load's load.json.

usage: chart.py OUT_DIR   (reads OUT_DIR/load.json, writes OUT_DIR/load.png)
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out = sys.argv[1] if len(sys.argv) > 1 else "target/mcp-bench"
data = json.load(open(f"{out}/load.json"))
rows = data["results"]
names = [r["config"] for r in rows]
rps = [r["throughput"] for r in rows]
p99 = [r["p99_us"] / 1000.0 for r in rows]
cpu = [r["proxy_cpu_us_per_request"] or 0 for r in rows]

fig, axes = plt.subplots(1, 3, figsize=(14, 4.5))
for ax, vals, title, color in (
    (axes[0], rps, "throughput (requests/s, higher is better)", "tab:blue"),
    (axes[1], p99, "p99 latency (ms, lower is better)", "tab:red"),
    (axes[2], cpu, "proxy CPU per request (µs, lower is better)", "tab:green"),
):
    bars = ax.bar(names, vals, color=color)
    ax.set_title(title, fontsize=10)
    ax.bar_label(bars, fmt="%.0f" if vals is rps else "%.1f", fontsize=8)
    ax.tick_params(axis="x", labelrotation=20)
fig.suptitle(
    f"mcp-load: {data['clients']} clients, initialize + notification + {data['calls']} tools/call + DELETE, "
    f"{data['duration']} s per configuration; proxy on CPU {data['proxy_cpu']}, load on CPU {data['load_cpu']}",
    fontsize=10,
)
fig.tight_layout()
fig.savefig(f"{out}/load.png", dpi=110)
print(f"wrote {out}/load.png")
