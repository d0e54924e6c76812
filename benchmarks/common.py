"""Helpers shared by the benchmark scripts: result files, tables and plots."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
#: an autoscaler that keeps exactly one replica per stage (no spares, no forecast)
FIXED = {"min_replicas": 1, "max_replicas": 1, "warm_spares": 0, "predictive": False}


def machine() -> dict:
    import os

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2, ensure_ascii=False))
    return path


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[str(h) for h in headers]] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def bar_plot(name: str, labels: list[str], values: list[float], ylabel: str, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar(labels, values, color=["#4c72b0" if "splitasr" in lbl else "#dd8452" for lbl in labels])
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    plt.xticks(rotation=15)
    fig.tight_layout()
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def line_plot(
    name: str,
    series: dict[str, tuple[list[float], list[float], str]],
    xlabel: str,
    ylabel: str,
    title: str,
    hline: tuple[float, str] | None = None,
) -> Path:
    """Lines (label -> (xs, ys, matplotlib style)), an optional horizontal reference line; PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, (xs, ys, style) in series.items():
        ax.plot(xs, ys, style, label=label)
    if hline is not None:
        ax.axhline(hline[0], color="grey", linestyle="--", label=hline[1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, name)


def save_figure(fig, name: str) -> Path:
    """``fig`` as benchmarks/results/NAME.png, closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def recorded_streams(workdir: Path, count: int, per_stream: int) -> tuple[list, list]:
    """Long-form real-speech streams (shared/longform.py) and their edge frames, recorded once."""
    import asyncio

    from splitasr.edge.agent import AgentOptions, record_frames
    from splitasr.edge.audio_in import file_source
    from splitasr.shared.longform import build_streams

    streams = build_streams(workdir / "streams", count=count, per_stream=per_stream)
    options = AgentOptions(language="en")  # the edge pipeline only: nothing is sent
    recorded = [asyncio.run(record_frames(file_source(s.path, realtime=False), options)) for s in streams]
    seconds = [s.utterances[-1].end_s + 2.0 for s in streams]
    print(f"{len(streams)} long-form streams of {min(seconds):.0f}-{max(seconds):.0f} s, edge frames recorded")
    return streams, recorded


def median(xs: list[float]) -> float:
    return float(np.median(xs))
