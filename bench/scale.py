"""Large panels: the job on synthetic panels of millions of rows, and pytorch-forecasting's own
`TimeSeriesDataSet` + `to_dataloader` on the same panels as the reference.

    python bench/scale.py [--rows 1e6 5e6 20e6 50e6] [--processes 1 2] [--skip-reference]
                          [--lock FILE] [--data-dir DIR]

Panels come from the built-in generator (`local_test/prepare_data.py --series N --weeks 100`:
N stores x 10 products x 100 weeks), kept in --data-dir between runs. Each job trains one epoch
of 50 batches on the CPU (`devices` processes on this host) and then evaluates, fits the
baselines and writes the report, as a user's first job does. Measured per run: the time to the
first training step (from the job's code starting, metrics.json), peak memory summed over every
process of the job (RSS and PSS, sampled every 0.2 s; PSS counts pages that several processes
share once), the bytes per row the job logs (`memory: N bytes per row`), training windows per
second (training batches only, validation excluded), and the shares of the job spent training
and after training (evaluation, baselines, report). The reference, in a process of its own,
reads the same parquet file, builds the library's dataset with the same schema and pulls one
batch; it runs only at sizes where its memory, projected from the largest size measured
before, fits under --reference-cap-gb, and is stopped if it passes the cap anyway (recorded as
not fitting, with the reason). Ratios against it are from the same run. Results:
bench/results/scale.json and .md (the README's table); the figures for 100 million rows on an
8-GPU host are a projection (a stated formula over these measurements), not a measurement.
With --lock, every run of at least --big-rows rows holds an exclusive flock on that file, so
that big runs of several benchmarks on one machine do not overlap.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from jobs import ROOT, machine, run_training_job, train_channel
from throughput import write_results

WEEKS = 100
PRODUCTS = 10  # the generator's products per store
OUTPUT = ROOT / "bench" / "results" / "scale.json"
SAMPLE_S = 0.2
GB = 1e9
PROJECTED_ROWS, PROJECTED_PROCESSES = 100_000_000, 8
_MEMORY_LINE = re.compile(r"memory: ([\d.]+) bytes per row")


class PeakMemory:
    """The peak, over time, of the memory summed over a process and its descendants; with a
    cap, the tree is killed when its PSS passes it."""

    def __init__(self, pid: int, cap_bytes: float | None = None) -> None:
        self.root = psutil.Process(pid)
        self.cap = cap_bytes
        self.rss = self.pss = 0
        self.processes = 0
        self.capped = False
        self._done = threading.Event()

    def _sample(self) -> None:
        try:
            tree = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        rss = pss = 0
        for process in tree:
            try:
                info = process.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)
        self.processes = max(self.processes, len(tree))
        if self.cap is not None and pss > self.cap and not self.capped:
            self.capped = True
            for process in reversed(tree):
                with suppress(psutil.NoSuchProcess):
                    process.kill()

    def _run(self) -> None:
        while not self._done.wait(SAMPLE_S):
            self._sample()

    @contextmanager
    def sampling(self) -> Iterator[PeakMemory]:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._done.set()
            thread.join()


@contextmanager
def exclusive(lock: Path | None, rows: int, big_rows: float) -> Iterator[None]:
    """Holds an exclusive flock on `lock` while a run of at least `big_rows` rows runs."""
    if lock is None or rows < big_rows:
        yield
        return
    with lock.open("a") as handle:
        print(f"waiting for {lock} ({rows:,} rows)", flush=True)
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def make_panel(rows: int, directory: Path) -> Path:
    """The generator's panel of about `rows` rows (stores x 10 products x 100 weeks) in
    `directory`, made once, in a process of its own (its memory is not the benchmark's)."""
    stores = max(1, rows // (PRODUCTS * WEEKS))
    channel = directory / f"panel-{stores * PRODUCTS * WEEKS}"
    if not (channel / "data.parquet").exists():
        staging = channel.with_name(channel.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "local_test" / "prepare_data.py"),
                *("--series", str(stores), "--weeks", str(WEEKS), "--output", str(staging)),
            ],
            check=True,
        )
        staging.rename(channel)
    return channel


def panel_rows(channel: Path) -> int:
    return int(channel.name.split("-")[1])


def job_run(channel: Path, processes: int, work: Path, logs: Path) -> dict[str, Any]:
    """The training job on `channel` with `processes` processes: its figures."""
    base = work / f"{channel.name}-p{processes}"
    train = train_channel(base)
    for name in ("data.parquet", "tft_config.json"):
        (train / name).symlink_to(channel / name)
    rows = panel_rows(channel)
    hyperparameters = {
        "max_epochs": "1",
        "limit_train_batches": "50",
        "devices": str(processes),
        "accelerator": "cpu",
    }
    memory: PeakMemory | None = None

    @contextmanager
    def watch(pid: int) -> Iterator[None]:
        nonlocal memory
        memory = PeakMemory(pid)
        with memory.sampling():
            yield

    started = time.monotonic()
    try:
        metrics = run_training_job(base, hyperparameters, {"OMP_NUM_THREADS": "1"}, watch=watch)
    finally:
        logs.mkdir(parents=True, exist_ok=True)
        shutil.copy(base / "job.log", logs / f"{base.name}.log")
    wall = time.monotonic() - started
    assert memory is not None
    summaries = [
        json.loads(p.read_text()) for p in (base / "output" / "data").glob("training-summary-*")
    ]
    windows = sum(e["windows"] for s in summaries for e in s["epochs"].values())
    logged = [float(m) for m in _MEMORY_LINE.findall((base / "job.log").read_text())]
    shutil.rmtree(base)  # the host panel's arrays: gigabytes at the larger sizes
    training_s, after_s = metrics["training_s"], wall - metrics["trained_s"]
    return {
        "rows": rows,
        "processes": processes,
        "wall_s": round(wall, 1),
        "first_step_s": metrics["first_step_s"],
        "training_s": training_s,
        "after_training_s": round(after_s, 1),
        "baselines_s": metrics["baselines_s"],
        "training_share": round(training_s / wall, 3),
        "after_training_share": round(after_s / wall, 3),
        "peak_pss_sum_gb": round(memory.pss / GB, 2),
        "peak_rss_sum_gb": round(memory.rss / GB, 2),
        "peak_processes": memory.processes,
        "logged_bytes_per_row": max(logged) if logged else None,
        "peak_pss_per_row": round(memory.pss / rows),
        "windows_trained": windows,
        "windows_per_s": round(windows / training_s, 1) if training_s > 0 else None,
        "val_MAE": metrics["val_MAE"],
    }


def worker_reference(path: str) -> dict[str, Any]:
    """pytorch-forecasting's dataset of the panel, as its tutorial builds one (the generator's
    schema, the job's encoder and horizon lengths, the last horizon held out), and one batch;
    `read_s` and `dataset_s` are counted from the read's start."""
    import pandas as pd
    from pytorch_forecasting import TimeSeriesDataSet
    from pytorch_forecasting.data import GroupNormalizer

    from tft_sagemaker.presets import SYNTHETIC

    started = time.monotonic()
    schema = SYNTHETIC.values
    data = pd.read_parquet(path)
    read_s = time.monotonic() - started
    data["time_idx"] = ((data["week"] - data["week"].min()).dt.days // 7).astype(int)
    cutoff = data["time_idx"].max() - schema["max_prediction_length"]
    training = TimeSeriesDataSet(
        data[data.time_idx <= cutoff],
        time_idx="time_idx",
        target=schema["target"],
        group_ids=schema["group_ids"],
        min_encoder_length=schema["min_encoder_length"],
        max_encoder_length=schema["max_encoder_length"],
        max_prediction_length=schema["max_prediction_length"],
        static_categoricals=schema["static_categoricals"],
        static_reals=schema["static_reals"],
        time_varying_known_categoricals=schema["time_varying_known_categoricals"],
        time_varying_known_reals=schema["time_varying_known_reals"],
        time_varying_unknown_reals=schema["time_varying_unknown_reals"],
        target_normalizer=GroupNormalizer(groups=schema["group_ids"], transformation="softplus"),
        add_relative_time_idx=True,
        add_target_scales=True,
        add_encoder_length=True,
    )
    dataset_s = time.monotonic() - started
    loader = training.to_dataloader(train=True, batch_size=schema["batch_size"], num_workers=0)
    next(iter(loader))
    return {
        "first_batch_at": time.time(),  # the parent counts from the process's start, imports
        "read_s": round(read_s, 1),  # included, as the job's first step is counted
        "dataset_s": round(dataset_s, 1),
        "windows": len(training),
    }


def reference_run(channel: Path, cap_gb: float) -> dict[str, Any]:
    """The reference on `channel` in a process of its own, stopped past `cap_gb` GB."""
    rows = panel_rows(channel)
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        started, started_at = time.monotonic(), time.time()
        proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(channel / "data.parquet"), out.name],
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "code")},
        )
        memory = PeakMemory(proc.pid, cap_gb * GB)
        with memory.sampling():
            proc.wait()
        result: dict[str, Any] = {"rows": rows, "wall_s": round(time.monotonic() - started, 1)}
        if memory.capped:
            result |= {"fits": False, "note": f"stopped at the {cap_gb:g} GB cap"}
        elif proc.returncode != 0:
            result |= {"fits": False, "note": f"exit code {proc.returncode} (killed for memory?)"}
        else:
            figures = json.loads(Path(out.name).read_text())
            first_batch_s = round(figures.pop("first_batch_at") - started_at, 1)
            result |= {"fits": True, "first_batch_s": first_batch_s, **figures}
    return result | {
        "peak_pss_gb": round(memory.pss / GB, 2),
        "peak_rss_gb": round(memory.rss / GB, 2),
        "peak_pss_per_row": round(memory.pss / rows),
    }


def reference_skipped(rows: int, measured: list[dict[str, Any]], cap_gb: float) -> str | None:
    """Why the reference is not run at `rows` (None: run it): a smaller size did not fit, or
    its memory projected from the sizes measured passes the cap (the line through the two
    largest, else the largest's bytes per row, which overstates: it counts the interpreter)."""
    measured = sorted((r for r in measured if "peak_pss_per_row" in r), key=lambda r: r["rows"])
    if not measured:
        return None
    last = measured[-1]
    if not last["fits"]:
        return f"not run: it did not fit at {last['rows']:,} rows ({last['note']})"
    if len(measured) > 1 and measured[-2]["fits"]:
        before = measured[-2]
        per_row = (
            (last["peak_pss_gb"] - before["peak_pss_gb"]) * GB / (last["rows"] - before["rows"])
        )
        projected = last["peak_pss_gb"] + per_row * (rows - last["rows"]) / GB
    else:
        per_row = last["peak_pss_per_row"]
        projected = per_row * rows / GB
    if projected > cap_gb:
        return (
            f"not run: {per_row:,.0f} bytes per row measured up to {last['rows']:,} rows "
            f"project {projected:.1f} GB at {rows:,}, above the {cap_gb:g} GB cap"
        )
    return None


def against_reference(run: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """The reference's figures over the job's, at the same size in the same run."""
    if not reference.get("fits"):
        return {}
    return {
        "reference_first_batch_over_first_step": round(
            reference["first_batch_s"] / run["first_step_s"], 2
        ),
        "reference_pss_over_job_pss": round(reference["peak_pss_gb"] / run["peak_pss_sum_gb"], 2),
    }


def _line(rows: list[float], values: list[float]) -> tuple[float, float]:
    """Least squares line through (rows, values): (intercept, per row); a constant through one
    size."""
    if len(rows) == 1:
        return values[0], 0.0
    slope, intercept = np.polyfit(rows, values, 1)
    return float(intercept), float(slope)


def projection(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Memory and time to the first step for PROJECTED_ROWS rows on a host of
    PROJECTED_PROCESSES processes, from the 1- and 2-process runs. A projection."""
    measured = [r for r in runs if "failed" not in r]  # a size this machine cannot hold
    one = {r["rows"]: r for r in measured if r["processes"] == 1}
    two = {r["rows"]: r for r in measured if r["processes"] == 2}
    sizes = sorted(set(one) & set(two))
    if len(sizes) < 2:
        return None
    projected: dict[str, Any] = {}
    for key in ("peak_pss_sum_gb", "first_step_s"):
        a, b = _line(sizes, [one[n][key] for n in sizes])
        increments = [two[n][key] - one[n][key] for n in sizes]
        c, d = _line(sizes, increments)
        # A further process costs at least what the second did at some size: the line alone
        # falls below 0 where the shared panel outgrows each process's own memory.
        increment = max(c + d * PROJECTED_ROWS, *increments, 0.0)
        projected[key] = round(a + b * PROJECTED_ROWS + (PROJECTED_PROCESSES - 1) * increment, 1)
        projected[f"{key}_formula"] = (
            f"{a:.4g} + {b:.4g} x rows + (processes - 1) x max({c:.4g} + {d:.4g} x rows, "
            f"{max(increments):.4g})"
        )
    return {
        "rows": PROJECTED_ROWS,
        "processes": PROJECTED_PROCESSES,
        **projected,
        "method": "a projection, not a measurement: a least-squares line in rows through the "
        f"1-process runs ({', '.join(f'{n:,}' for n in sizes)} rows), plus (processes - 1) "
        "times the second process's increment: the larger of its line in rows and the largest "
        "increment measured. It assumes the job stays linear in rows and that each further "
        "process costs what the second did; the first step assumes the host prepares on CPUs "
        "like this machine's",
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        "| rows | processes | first step (s) | peak PSS sum (GB) | peak RSS sum (GB) "
        "| logged bytes/row | windows/s | training | after training | job (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["runs"]:
        if "failed" in r:
            lines.append(f"| {r['rows']:,} | {r['processes']} | {r['failed']} |" + " |" * 7)
            continue
        lines.append(
            f"| {r['rows']:,} | {r['processes']} | {r['first_step_s']} | {r['peak_pss_sum_gb']} "
            f"| {r['peak_rss_sum_gb']} | {r['logged_bytes_per_row']} | {r['windows_per_s']} "
            f"| {r['training_share']:.0%} | {r['after_training_share']:.0%} "
            f"({r['after_training_s']} s) | {r['wall_s']} |"
        )
    if results["reference"]:
        lines += [
            "",
            "Reference: pytorch-forecasting's `TimeSeriesDataSet` + `to_dataloader` (one "
            "process), and its figures over the job's 1-process ones:",
            "",
            "| rows | first batch (s) | peak PSS (GB) | PSS bytes/row | first batch / job's "
            "first step | PSS / job's PSS |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in results["reference"]:
            if "peak_pss_gb" not in r:  # not run
                lines.append(f"| {r['rows']:,} | {r['note']} | | | | |")
                continue
            if not r["fits"]:
                lines.append(f"| {r['rows']:,} | {r['note']} | {r['peak_pss_gb']} | | | |")
                continue
            lines.append(
                f"| {r['rows']:,} | {r['first_batch_s']} | {r['peak_pss_gb']} "
                f"| {r['peak_pss_per_row']:,} "
                f"| {r.get('reference_first_batch_over_first_step', '')} "
                f"| {r.get('reference_pss_over_job_pss', '')} |"
            )
    if p := results.get("projection"):
        lines += [
            "",
            f"Projection (not measured) for {p['rows']:,} rows on a {p['processes']}-GPU host: "
            f"peak memory {p['peak_pss_sum_gb']} GB summed over its processes "
            f"({p['peak_pss_sum_gb_formula']}, GB), first step after {p['first_step_s']} s "
            f"({p['first_step_s_formula']}, s); {p['method']}.",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # 50 million rows take about 14 GB here: on a smaller machine the job refuses them with its
    # memory estimate (recorded as failed; the other sizes run).
    parser.add_argument("--rows", type=float, nargs="+", default=[1e6, 5e6, 20e6, 50e6])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument(
        "--reference-cap-gb",
        type=float,
        default=round(0.7 * psutil.virtual_memory().total / GB, 1),
        help="the reference's memory limit (default: 70%% of this machine's)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "tft-scale-panels",
        help="where the panels (and the jobs' logs) are kept between runs",
    )
    parser.add_argument("--lock", type=Path, help="flock held by every big run (--big-rows)")
    parser.add_argument("--big-rows", type=float, default=5e6)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        Path(args.worker[1]).write_text(json.dumps(worker_reference(args.worker[0])))
        return 0

    results: dict[str, Any] = {"machine": machine(), "runs": [], "reference": []}
    args.data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="scale-", dir=args.data_dir) as work:
        for rows in sorted(int(r) for r in args.rows):
            with exclusive(args.lock, rows, args.big_rows):
                channel = make_panel(rows, args.data_dir)
            size_runs = []
            for processes in args.processes:
                with exclusive(args.lock, rows, args.big_rows):
                    try:
                        run = job_run(channel, processes, Path(work), args.data_dir / "logs")
                    except SystemExit as failed:  # the job's cause; the other sizes still run
                        run = {"rows": panel_rows(channel), "processes": processes}
                        run["failed"] = str(failed)
                        shutil.rmtree(Path(work) / f"{channel.name}-p{processes}")
                print(json.dumps(run), flush=True)
                size_runs.append(run)
            results["runs"] += size_runs
            write_results(args.output, results, table(results))  # what is measured so far
            if args.skip_reference:
                continue
            reason = reference_skipped(
                panel_rows(channel), results["reference"], args.reference_cap_gb
            )
            if reason:
                reference: dict[str, Any] = {
                    "rows": panel_rows(channel),
                    "fits": None,
                    "note": reason,
                }
            else:
                with exclusive(args.lock, rows, args.big_rows):
                    reference = reference_run(channel, args.reference_cap_gb)
            single = next((r for r in size_runs if r["processes"] == 1), None)
            if single is not None and "failed" not in single:
                reference |= against_reference(single, reference)
            print(json.dumps(reference), flush=True)
            results["reference"].append(reference)
            write_results(args.output, results, table(results))
    results["projection"] = projection([r for r in results["runs"] if "failed" not in r])
    write_results(args.output, results, table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
