"""What each lever of the speed-up layer buys: this project's training path with every lever on,
and with each lever off in turn, in one run on one machine.

    python bench/ablation.py [--data STALLION] [--repeats 3] [--epochs 5] [--threads N]

Two models on Stallion, both on bench/throughput.py's budget (50 batches per epoch, epochs 2+
timed, validation excluded), each run in a fresh process: the tutorial's (hidden 16, batch 128:
the throughput comparison's) and the `stallion` preset's (hidden 32, batch 256, dropout 0.2,
weight averaging: what the job trains). Each round runs every configuration of both once, in
an order rotated from round to round; a lever's figures are the medians over rounds of the
ratio between the all-on run and the lever-off run of the same round, so that a machine whose
load drifts hits both sides of each ratio. Two measures: training windows/s (wall clock), and
the process's CPU time per training window over the same phase (user + system, all threads),
which other load on the machine disturbs far less (with --threads 1, hardly at all).
Writes bench/results/ablation.json (or --output) and the README's table beside it (.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "code"), str(ROOT / "bench")]

from jobs import machine  # noqa: E402
from throughput import measure, write_results  # noqa: E402

from tft_sagemaker.speedups import CPU_LEVERS as LEVERS  # noqa: E402

MODELS = {  # name → bench/throughput.py's budget
    "tutorial model, batch 128": "throughput",
    "stallion preset, batch 256": "preset throughput",
}
ALL_ON = "all levers on"
CONFIGURATIONS = {ALL_ON: ()} | {f"without {lever}": (lever,) for lever in LEVERS}


def lever_figures(runs: dict[str, list[dict[str, Any]]], lever: str) -> dict[str, Any]:
    """What `lever` buys, round by round and as medians: windows/s with it over windows/s
    without it, and CPU per window without it over CPU per window with it, minus one."""
    pairs = list(zip(runs[ALL_ON], runs[f"without {lever}"], strict=True))
    wall = [on["windows_per_s"] / off["windows_per_s"] - 1 for on, off in pairs]
    cpu = [off["cpu_ms_per_window"] / on["cpu_ms_per_window"] - 1 for on, off in pairs]
    return {
        "windows_per_s_without": [round(off["windows_per_s"], 1) for _, off in pairs],
        "wall_gain": [round(x, 4) for x in wall],
        "cpu_gain": [round(x, 4) for x in cpu],
        "wall_gain_median": round(statistics.median(wall), 4),
        "cpu_gain_median": round(statistics.median(cpu), 4),
    }


def cell(figures: dict[str, Any]) -> str:
    wall = figures["wall_gain"]
    return (
        f"{figures['wall_gain_median']:+.1%} ({min(wall):+.1%} to {max(wall):+.1%}); "
        f"CPU {figures['cpu_gain_median']:+.1%}"
    )


def table(results: dict[str, Any]) -> str:
    models = results["models"]
    header = " | ".join(
        f"{name}: {statistics.median(r['windows_per_s'] for r in m['runs'][ALL_ON]):,.0f} "
        "windows/s all on"
        for name, m in models.items()
    )
    lines = [f"| lever | {header} |", "| --- |" + " --- |" * len(models)]
    for lever in LEVERS:
        lines.append(
            f"| `{lever}` | " + " | ".join(cell(m["levers"][lever]) for m in models.values()) + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("STALLION_PARQUET"))
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run (1 warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (runs per configuration)")
    parser.add_argument("--threads", type=int, help="torch threads (default: the job's choice)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "ablation.json")
    args = parser.parse_args()
    if not args.data or not Path(args.data).is_file():
        parser.error("give --data or set STALLION_PARQUET to the Stallion parquet file")

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    common = {
        "data": args.data,
        "epochs": args.epochs,
        "device": device,
        "precision": "bf16-mixed" if device == "cuda" else "32",
        "threads": args.threads,
    }
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        model: {config: [] for config in CONFIGURATIONS} for model in MODELS
    }
    order = [(model, config) for config in CONFIGURATIONS for model in MODELS]
    for round_ in range(args.repeats):
        shift = round_ * len(order) // args.repeats
        for model, config in order[shift:] + order[:shift]:
            run = measure("ours", **common, budget=MODELS[model], levers_off=CONFIGURATIONS[config])
            runs[model][config].append(run)
            print(
                f"round {round_ + 1}/{args.repeats}, {model}, {config}: "
                f"{run['windows_per_s']:.0f} windows/s, "
                f"{run['cpu_ms_per_window']:.3f} CPU ms per window",
                flush=True,
            )
    results = {
        "machine": machine(),
        "settings": {k: v for k, v in common.items() if k != "data"} | {"repeats": args.repeats},
        "models": {
            model: {
                "levers": {lever: lever_figures(side, lever) for lever in LEVERS},
                "runs": {
                    config: [
                        {k: run[k] for k in ("windows_per_s", "cpu_ms_per_window", "peak_rss_gb")}
                        for run in config_runs
                    ]
                    for config, config_runs in side.items()
                },
            }
            for model, side in runs.items()
        },
    }
    write_results(args.output, results, table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
