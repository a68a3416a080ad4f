"""Stallion accuracy: the `stallion` preset with its default budget, over several seeds.

    python bench/accuracy.py [--seeds 42 1 7 2 3] [--data PATH] [key=value ...]

Runs the real training job (code/train.py, one process per seed, each in a fresh /opt/ml-shaped
directory) on the real Stallion data and prints the validation MAE of each seed, the TFT
alone's (`tft_val_MAE`, what the target is for) and the shipped forecast's (`val_MAE`: the
combination, ensemble=true), beside the naive Baseline's, then the medians. Writes
bench/results/stallion_accuracy.json.
Reference figures (shared/notes/numbers-to-beat.md): Baseline 293.0; the tutorial with
pytorch-forecasting 1.x 262.2 (the best published); the same recipe with adam 268-273.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from jobs import ROOT, machine, run_training_job, train_channel

RESULTS = ROOT / "bench" / "results"
TARGET_MAE = 262.0


def run_seed(data: Path, seed: int, overrides: list[str], workdir: Path) -> dict[str, float]:
    base = workdir / f"seed-{seed}"
    shutil.copy(data, train_channel(base) / "stallion.parquet")
    hyperparameters = {"preset": "stallion", "seed": str(seed)}
    hyperparameters |= dict(pair.partition("=")[::2] for pair in overrides)
    started = time.monotonic()
    metrics = run_training_job(base, hyperparameters)
    metrics["wall_s"] = round(time.monotonic() - started, 1)
    return metrics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 7, 2, 3])
    parser.add_argument("--data", type=Path, default=os.environ.get("STALLION_PARQUET"))
    parser.add_argument("--output", type=Path, default=RESULTS / "stallion_accuracy.json")
    parser.add_argument("overrides", nargs="*", help="hyperparameters key=value")
    args = parser.parse_args()
    if args.data is None or not Path(args.data).is_file():
        parser.error("give --data or set STALLION_PARQUET to the Stallion parquet file")

    runs = {}
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            m = run_seed(Path(args.data), seed, args.overrides, Path(workdir))
            runs[seed] = m
            print(
                f"seed {seed}: TFT alone {m['tft_val_MAE']:.1f}, shipped {m['val_MAE']:.1f} "
                f"(Baseline {m['baseline_val_MAE']:.1f}), best epoch {m['best_epoch']}, "
                f"{m['epochs_trained']} epochs, {m['wall_s']} s",
                flush=True,
            )
    tft = [m["tft_val_MAE"] for m in runs.values()]
    result = {
        "median_tft_val_MAE": round(statistics.median(tft), 2),
        "median_val_MAE": round(statistics.median(m["val_MAE"] for m in runs.values()), 2),
        "baseline_val_MAE": round(next(iter(runs.values()))["baseline_val_MAE"], 2),
        "target_val_MAE": TARGET_MAE,
        "seeds": args.seeds,
        "tft_val_MAE": {str(s): round(m["tft_val_MAE"], 2) for s, m in runs.items()},
        "val_MAE": {str(s): round(m["val_MAE"], 2) for s, m in runs.items()},
        "ensemble_weights": {str(s): m.get("ensemble_weights") for s, m in runs.items()},
        "val_SMAPE": {str(s): round(m["val_SMAPE"], 4) for s, m in runs.items()},
        "best_epoch": {str(s): m["best_epoch"] for s, m in runs.items()},
        "wall_s": {str(s): m["wall_s"] for s, m in runs.items()},
        "overrides": args.overrides,
        "machine": machine(),
    }
    print(
        f"median TFT alone {result['median_tft_val_MAE']}, shipped {result['median_val_MAE']} "
        f"over seeds {args.seeds} (Baseline {result['baseline_val_MAE']}, target for the TFT "
        f"<= {TARGET_MAE})"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["median_tft_val_MAE"] <= TARGET_MAE else 1


if __name__ == "__main__":
    sys.exit(main())
