"""Speed benchmark: the reference tutorial loop vs this project's training path, same machine.

    python bench/throughput.py [--data STALLION] [--skip-time-to-mae] [--skip-scaling]

Measures, each in a fresh process (so peak memory is per run):
1. training throughput (windows/s over the training phase of epochs 2+, validation excluded)
   and peak RSS, for (a) the reference (bench/reference.py: pytorch-forecasting's Stallion
   tutorial, to_dataloader, num_workers=0) and (b) this project's path with default settings,
   same model (hidden 16, 2 heads) and batch size (128); --repeats runs of each, alternating,
   and each side's median run is reported (a shared machine's drift hits both sides). On a
   GPU also for bf16 mixed precision, with the share of each step spent waiting for data and
   the GPU utilisation;
2. time to reach validation MAE 262 on Stallion: the reference recipe (all of its 30 epochs,
   early stopping off, so that it has every chance) vs the `stallion` preset, each run
   stopping at the target; --mae-repeats alternating runs of each, the ratio of each pair and
   their median reported;
3. data preparation time and peak memory for synthetic panels of 350 to 35,000 series.
Writes bench/results/throughput.json (or --output) and a table beside it (.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "code"), str(ROOT / "bench")]
from jobs import machine  # noqa: E402

TARGET_MAE = 262.0
BATCH_SIZE = 128


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------
def _timer_class():
    import torch
    from lightning.pytorch.callbacks import Callback

    class EpochTimer(Callback):
        """Per epoch: training-phase seconds (first batch fetch to last step; validation
        excluded) and the process's CPU seconds over it, windows, time waiting for batches vs
        inside steps, the validation MAE and the wall time since fit start at the end of the
        epoch. `stop_at_target`: training stops once the validation MAE reaches TARGET_MAE."""

        def __init__(self, cuda: bool, stop_at_target: bool = False) -> None:
            self.cuda, self.epochs, self.fit_start = cuda, [], 0.0
            self.stop_at_target = stop_at_target
            self.utilisation: list[float] = []
            self._stop = threading.Event()

        def _now(self) -> float:
            if self.cuda:
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_fit_start(self, trainer, pl_module) -> None:
            self.fit_start = time.perf_counter()
            if self.cuda:
                threading.Thread(target=self._sample_utilisation, daemon=True).start()

        def _sample_utilisation(self) -> None:
            while not self._stop.wait(0.1):
                try:
                    self.utilisation.append(float(torch.cuda.utilization()))
                except Exception:  # no NVML: no utilisation figure
                    return

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.current = {"windows": 0, "wait_s": 0.0, "step_s": 0.0}
            self._epoch_start = self._last_end = self._now()
            self._cpu_start = time.process_time()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._batch_start = self._now()
            self.current["wait_s"] += self._batch_start - self._last_end

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self._last_end = self._now()
            self.current["step_s"] += self._last_end - self._batch_start
            self.current["windows"] += int(batch[0]["decoder_lengths"].shape[0])

        def on_validation_start(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking and "train_s" not in self.current:
                self.current["train_s"] = self._last_end - self._epoch_start
                self.current["cpu_s"] = time.process_time() - self._cpu_start

        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking:
                return
            mae = trainer.callback_metrics.get("val_MAE")
            self.current["val_MAE"] = float(mae) if mae is not None else None
            self.current["wall_s"] = time.perf_counter() - self.fit_start
            self.epochs.append(self.current)
            if self.stop_at_target and (self.current["val_MAE"] or 1e9) <= TARGET_MAE:
                trainer.should_stop = True

        def on_fit_end(self, trainer, pl_module) -> None:
            self._stop.set()

        def summary(self, warmup: int = 1) -> dict[str, Any]:
            steady = self.epochs[warmup:] or self.epochs
            windows = sum(e["windows"] for e in steady)
            seconds = sum(e["train_s"] for e in steady)
            cpu_seconds = sum(e["cpu_s"] for e in steady)
            waiting = sum(e["wait_s"] for e in steady)
            reached = next(
                (e["wall_s"] for e in self.epochs if (e["val_MAE"] or 1e9) <= TARGET_MAE), None
            )
            return {
                "windows_per_s": windows / seconds,
                "cpu_ms_per_window": cpu_seconds / windows * 1000,
                "data_wait_share": waiting / seconds,
                "epochs": len(self.epochs),
                "best_val_MAE": min(e["val_MAE"] for e in self.epochs),
                "time_to_mae_s": reached,
                "fit_s": self.epochs[-1]["wall_s"],
                "gpu_utilisation_pct": (
                    sum(self.utilisation) / len(self.utilisation) if self.utilisation else None
                ),
            }

    return EpochTimer


def _peak_rss_gb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024**2, 3)  # Linux reports KiB


def worker_reference(
    data: str,
    epochs: int,
    device: str,
    precision: str,
    early_stopping: bool = True,
    stop_at_target: bool = False,
) -> dict[str, Any]:
    from reference import tutorial_fit

    timer = _timer_class()(device == "cuda", stop_at_target)
    accelerator = "gpu" if device == "cuda" else "cpu"
    with tempfile.TemporaryDirectory() as logs:
        tutorial_fit(
            data, epochs, accelerator, precision, [timer], logs, early_stopping=early_stopping
        )
    return timer.summary()


def worker_ours(
    data: str,
    epochs: int,
    device: str,
    precision: str,
    budget: str,
    batch_size: int = BATCH_SIZE,
    levers_off: tuple[str, ...] = (),
    threads: int | None = None,
    stop_at_target: bool = False,
) -> dict[str, Any]:
    """`levers_off`: speed-up levers switched off; `threads`: torch threads (default: the
    job's choice for the host)."""
    from tft_sagemaker.config import build_config
    from tft_sagemaker.presets import PRESET_VALUES

    # "throughput": the tutorial's model and batch with this project's defaults;
    # "preset throughput": the stallion preset's model and batch, on the throughput budget;
    # "recipe": the stallion preset exactly as the job runs it (its own budget).
    hyperparameters = {
        "preset": "stallion",
        "precision": precision,
        "accelerator": "gpu" if device == "cuda" else "cpu",
    }
    if budget in ("throughput", "preset throughput"):
        hyperparameters |= {"max_epochs": str(epochs), "limit_train_batches": "50"}
    if budget == "throughput":
        hyperparameters |= {
            # The tutorial's model and optimiser settings, exactly (bench/reference.py).
            "hidden_size": "16",
            "attention_head_size": "2",
            "hidden_continuous_size": "8",
            "dropout": "0.1",
            "learning_rate": "0.03",
            "batch_size": str(batch_size),
        }
    hyperparameters |= dict.fromkeys(levers_off, "false")
    config = build_config(hyperparameters, None, PRESET_VALUES)
    timer = _timer_class()(device == "cuda", stop_at_target)
    fit_on_stallion(config, data, timer, threads)
    return timer.summary()


def fit_on_stallion(config: Any, data: str, timer: Any, threads: int | None = None) -> Any:
    """The real job's build and fit on the Stallion file in a fresh /opt/ml-shaped directory,
    timed by `timer` (`threads`: torch threads instead of the job's choice); the job."""
    import shutil

    import torch

    from tft_sagemaker.job import build_job, fit, plan_for
    from tft_sagemaker.sagemaker.paths import JobPaths

    with tempfile.TemporaryDirectory() as base:
        channel = Path(base) / "input" / "data" / "train"
        channel.mkdir(parents=True)
        shutil.copy(data, channel / "stallion.parquet")
        paths = JobPaths.from_env({"SAGEMAKER_BASE_DIR": base})
        job = build_job(config, plan_for(config, paths), paths)
        if threads:
            torch.set_num_threads(threads)
        job.trainer.callbacks.append(timer)
        fit(job)
    return job


def worker_scaling(n_series: int) -> dict[str, Any]:
    import torch

    from tft_sagemaker.config import build_config
    from tft_sagemaker.dataset import build_training_dataset, build_validation_dataset
    from tft_sagemaker.job_data import split_holdout
    from tft_sagemaker.preparation import prepare_training_frame
    from tft_sagemaker.presets import PRESET_VALUES
    from tft_sagemaker.speedups.batches import WindowBatcher
    from tft_sagemaker.synthetic import make_panel
    from tft_sagemaker.validation import validate_frame

    frame = make_panel(n_stores=n_series // 10, n_products=10, n_weeks=60)
    rows = len(frame)
    config = build_config({"preset": "synthetic"}, None, PRESET_VALUES).data
    before = _peak_rss_gb()
    started = time.perf_counter()
    prepared = validate_frame(prepare_training_frame(frame, config)[0], config, "train", 30)
    training = build_training_dataset(split_holdout(prepared, config), config)
    validation = build_validation_dataset(training, prepared, config)
    WindowBatcher(training, device=torch.device("cpu"))
    seconds = time.perf_counter() - started
    return {
        "series": n_series,
        "rows": rows,
        "windows": len(training) + len(validation),
        "seconds": round(seconds, 2),
        "s_per_million_rows": round(seconds / rows * 1e6, 2),
        "peak_rss_gb": _peak_rss_gb(),
        "peak_before_prep_gb": before,
    }


# --------------------------------------------------------------------------------------------
# Orchestration (each measurement in its own process)
# --------------------------------------------------------------------------------------------
def measure(kind: str, **kwargs: Any) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", kind, "--args", json.dumps(kwargs)]
    proc = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{kind} {kwargs} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_worker(kind: str, kwargs: dict[str, Any]) -> None:
    import logging
    import warnings

    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    result = {"reference": worker_reference, "ours": worker_ours, "scaling": worker_scaling}[kind](
        **kwargs
    )
    result["peak_rss_gb"] = result.get("peak_rss_gb") or _peak_rss_gb()
    print(json.dumps(result))


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput, with every run's throughput beside it."""
    ordered = sorted(runs, key=lambda run: run["windows_per_s"])
    return {
        **ordered[(len(ordered) - 1) // 2],
        "windows_per_s_runs": [round(run["windows_per_s"], 1) for run in runs],
    }


def time_to_mae(reference: list[dict[str, Any]], ours: list[dict[str, Any]]) -> dict[str, Any]:
    """Seconds to the target MAE per run and the ratio of each alternating pair, with their
    median. A reference run that never gets there is credited with its whole fit: the ratio
    is then a lower bound (">= ")."""

    def median(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    ratios = [
        (r["time_to_mae_s"] or r["fit_s"]) / o["time_to_mae_s"]
        for r, o in zip(reference, ours, strict=True)
        if o["time_to_mae_s"]
    ]
    bound = "" if all(r["time_to_mae_s"] for r in reference) else ">= "
    return {
        "target_val_MAE": TARGET_MAE,
        "reference_s": [r["time_to_mae_s"] and round(r["time_to_mae_s"], 1) for r in reference],
        "reference_fit_s": [round(r["fit_s"], 1) for r in reference],
        "reference_best_val_MAE": [round(r["best_val_MAE"], 1) for r in reference],
        "ours_s": [o["time_to_mae_s"] and round(o["time_to_mae_s"], 1) for o in ours],
        "ours_val_MAE": [round(o["best_val_MAE"], 1) for o in ours],
        "ratios": [round(x, 2) for x in ratios],
        "ratio": f"{bound}{median(ratios):.2f}" if len(ratios) == len(ours) else None,
    }


def spread(values: list[float | None], unit: str = "") -> str:
    """`median (min-max)` of the values, or `not reached` when one is None."""
    if any(v is None for v in values):
        return "not reached"
    low, high = min(values), max(values)
    return f"{statistics.median(values):g}{unit} ({low:g}-{high:g})"


def table(results: dict[str, Any]) -> str:
    lines = ["| measurement | reference | ours | ratio |", "| --- | --- | --- | --- |"]
    for name, pair in results["throughput"].items():
        ref, ours = pair["reference"], pair["ours"]
        lines.append(
            f"| windows/s, {name} | {ref['windows_per_s']:.0f} | {ours['windows_per_s']:.0f} "
            f"| {ours['windows_per_s'] / ref['windows_per_s']:.2f}x |"
        )
        lines.append(f"| peak RSS GB, {name} | {ref['peak_rss_gb']} | {ours['peak_rss_gb']} | |")
        lines.append(
            f"| data-wait share of training time, {name} | {ref['data_wait_share']:.0%} "
            f"| {ours['data_wait_share']:.0%} | |"
        )
        if ref.get("gpu_utilisation_pct") is not None:
            lines.append(
                f"| GPU utilisation %, {name} | {ref['gpu_utilisation_pct']:.0f} "
                f"| {ours['gpu_utilisation_pct']:.0f} | |"
            )
    if "large_batch" in results:
        large = results["large_batch"]
        lines.append(
            f"| windows/s, ours at batch {large['batch_size']} | | "
            f"{large['ours']['windows_per_s']:.0f} | |"
        )
    if "time_to_mae" in results:
        t = results["time_to_mae"]
        reference = spread(t["reference_s"], " s")
        if reference == "not reached":
            reference = (
                f"not reached in 30 epochs (best {spread(t['reference_best_val_MAE'])}, "
                f"{spread(t['reference_fit_s'], ' s')})"
            )
        ratio = f"{t['ratio']} ({min(t['ratios']):g}-{max(t['ratios']):g})" if t["ratio"] else None
        lines.append(
            f"| seconds to val MAE <= {TARGET_MAE:g}, {len(t['ours_s'])} alternating runs "
            f"| {reference} | {spread(t['ours_s'], ' s')} | {ratio} |"
        )
    for row in results.get("scaling", []):
        lines.append(
            f"| data prep, {row['series']} series / {row['rows']} rows | | "
            f"{row['seconds']} s, {row['s_per_million_rows']} s/M rows, "
            f"peak {row['peak_rss_gb']} GB | |"
        )
    return "\n".join(lines) + "\n"


def write_results(output: Path, results: dict[str, Any], table: str) -> None:
    """`results` as JSON at `output` and the markdown `table` beside it (.md), printed too."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    output.with_suffix(".md").write_text(table)
    print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    parser.add_argument("--data", default=os.environ.get("STALLION_PARQUET"))
    parser.add_argument("--epochs", type=int, default=5, help="throughput epochs (1 warm-up)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="alternating throughput runs per side (median)"
    )
    parser.add_argument("--skip-time-to-mae", action="store_true")
    parser.add_argument(
        "--mae-repeats", type=int, default=3, help="alternating time-to-MAE runs per side"
    )
    parser.add_argument(
        "--large-batch",
        type=int,
        default=1024,
        help="on a GPU, also this project's path at this batch size (bf16)",
    )
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--scaling-series", type=int, nargs="+", default=[350, 3500, 35000])
    parser.add_argument(
        "--output", type=Path, default=ROOT / "bench" / "results" / "throughput.json"
    )
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, json.loads(args.args))
        return 0
    if not args.data or not Path(args.data).is_file():
        parser.error("give --data or set STALLION_PARQUET to the Stallion parquet file")

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    precisions = ["32", "bf16-mixed"] if device == "cuda" else ["32"]
    results: dict[str, Any] = {"machine": machine(), "batch_size": BATCH_SIZE, "throughput": {}}
    for precision in precisions:
        common = {
            "data": args.data,
            "epochs": args.epochs,
            "device": device,
            "precision": precision,
        }
        # Alternating runs, each side's median: drift of a shared machine hits both sides.
        runs: dict[str, list[dict[str, Any]]] = {"reference": [], "ours": []}
        for _ in range(args.repeats):
            runs["reference"].append(measure("reference", **common))
            runs["ours"].append(measure("ours", **common, budget="throughput"))
        pair = {side: median_run(side_runs) for side, side_runs in runs.items()}
        results["throughput"][f"{device} {precision}"] = pair
        print(
            f"{device} {precision}: reference {pair['reference']['windows_per_s']:.0f}, "
            f"ours {pair['ours']['windows_per_s']:.0f} windows/s "
            f"(medians of {args.repeats} alternating runs each)",
            flush=True,
        )
    if device == "cuda" and args.large_batch:
        large = measure(
            "ours",
            data=args.data,
            epochs=args.epochs,
            device=device,
            precision=precisions[-1],
            budget="throughput",
            batch_size=args.large_batch,
        )
        results["large_batch"] = {"batch_size": args.large_batch, "ours": large}
        print(f"ours at batch {args.large_batch}: {large['windows_per_s']:.0f} windows/s")
    first = next(iter(results["throughput"].values()))
    results["reference_windows_per_s"] = round(first["reference"]["windows_per_s"], 1)
    results["ours_windows_per_s"] = round(first["ours"]["windows_per_s"], 1)
    results["ratio"] = round(results["ours_windows_per_s"] / results["reference_windows_per_s"], 2)

    if not args.skip_time_to_mae:
        common = {
            "data": args.data,
            "epochs": 30,
            "device": device,
            "precision": precisions[-1],
            "stop_at_target": True,
        }
        # Alternating, like the throughput runs. The reference gets all its 30 epochs (no early
        # stopping) to reach the target; each run stops once it is reached.
        runs = {"reference": [], "ours": []}
        for _ in range(args.mae_repeats):
            runs["reference"].append(measure("reference", **common, early_stopping=False))
            runs["ours"].append(measure("ours", **common, budget="recipe"))
        results["time_to_mae"] = time_to_mae(runs["reference"], runs["ours"])
        results["time_to_mae_ratio"] = results["time_to_mae"]["ratio"]
        print(f"time to MAE {TARGET_MAE:g}: {results['time_to_mae']}", flush=True)

    if not args.skip_scaling:
        results["scaling"] = []
        for n in args.scaling_series:
            row = measure("scaling", n_series=n)
            results["scaling"].append(row)
            print(f"data prep {n} series: {row}", flush=True)

    write_results(args.output, results, table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
