"""Throughput of the Stallion preset on this machine, in one container, and in two at once.

    python bench/container.py [--image tft-sagemaker:local-cpu] [--data STALLION] [--repeats 2]

Needs Docker and the CPU image (`make e2e` builds both). Each measurement trains the `stallion`
preset (its model and batch, --batches per epoch, --epochs epochs) in a fresh process and
reports training windows/s over the epochs after the first (bench/throughput.py's timer), and
the CPU seconds the process spent per training second. The cases, alternating, --repeats times:

  host, alone                 one process on the machine (and with half the threads)
  container, alone            the same in one container (`docker run`)
  2 host processes / 2 containers at once, each
    - sizing its threads to all the cores it sees (as before TFT_HOSTS_PER_MACHINE),
    - (host) the same with OMP_WAIT_POLICY=PASSIVE (waiting threads sleep, not spin; also
      alone),
    - with TFT_HOSTS_PER_MACHINE=2 (each its share: what compose and local mode now set),
    - (containers) with `--cpus` half the machine: the job reads the cgroup quota;

and the wall time of the two-node compose job (docker-compose.two-node.yml, the same preset)
before (TFT_HOSTS_PER_MACHINE=1) and after (the file's default, 2). Writes
bench/results/container.json and a table beside it (.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "code"), str(ROOT / "bench")]

IMAGE = "tft-sagemaker:local-cpu"
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.two-node.yml", "docker-compose.cpu.yml")


def hyperparameters(epochs: int, batches: int) -> dict[str, str]:
    """The stallion preset on a fixed budget, every epoch the same length."""
    return {
        "preset": "stallion",
        "max_epochs": str(epochs),
        "limit_train_batches": str(batches),
        "early_stopping_patience": "0",
    }


# --------------------------------------------------------------------------------------------
# Worker: one training process (on the host or in a container)
# --------------------------------------------------------------------------------------------
def worker(data: str, epochs: int, batches: int) -> dict[str, Any]:
    from throughput import _timer_class, fit_on_stallion

    from tft_sagemaker.config import build_config
    from tft_sagemaker.presets import PRESET_VALUES

    config = build_config(hyperparameters(epochs, batches), None, PRESET_VALUES)
    timer = _timer_class()(False)
    job = fit_on_stallion(config, data, timer)
    summary = timer.summary()
    steady = timer.epochs[1:]  # the timer's own CPU seconds over the training phase
    train_s = sum(e["train_s"] for e in steady)
    cpu_s = sum(e["cpu_s"] for e in steady)
    return {
        "windows_per_s": round(summary["windows_per_s"], 1),
        "cpu_per_train_s": round(cpu_s / train_s, 2),
        "threads": job.plan.threads_per_process,
    }


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------
def host_command(args: argparse.Namespace) -> list[str]:
    return [sys.executable, __file__, "--worker", "--data", args.data, *worker_flags(args)]


def container_command(args: argparse.Namespace, name: str, docker_flags: list[str]) -> list[str]:
    return [
        "docker",
        "run",
        "--rm",
        "--name",
        name,
        "--entrypoint",
        "python",
        "-v",
        f"{ROOT / 'bench'}:/bench:ro",
        "-v",
        f"{Path(args.data).resolve()}:/data/stallion.parquet:ro",
        *docker_flags,
        args.image,
        "/bench/container.py",
        "--worker",
        "--data",
        "/data/stallion.parquet",
        *worker_flags(args),
    ]


def worker_flags(args: argparse.Namespace) -> list[str]:
    return ["--epochs", str(args.epochs), "--batches", str(args.batches)]


def run_together(commands: list[list[str]], env: dict[str, str]) -> list[dict[str, Any]]:
    """Start the commands at once; each prints its result as the last line."""
    procs = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for c in commands
    ]
    results = []
    for command, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate()
        if proc.returncode != 0:
            sys.stderr.write(out[-3000:] + err[-3000:])
            raise SystemExit(f"failed: {' '.join(command)}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def cases(args: argparse.Namespace) -> dict[str, tuple[list[list[str]], dict[str, str]]]:
    """name -> (commands started together, environment)."""
    base = {
        k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "TFT_HOSTS_PER_MACHINE")
    }
    share = {**base, "TFT_HOSTS_PER_MACHINE": "2"}
    passive = {**base, "OMP_WAIT_POLICY": "PASSIVE"}
    half = str((os.cpu_count() or 2) / 2)

    def docker(name: str, flags: list[str] | None = None) -> list[str]:
        return container_command(args, f"tft-bench-{name}", flags or [])

    def env_flags(env: dict[str, str]) -> list[str]:
        return ["-e", f"TFT_HOSTS_PER_MACHINE={env['TFT_HOSTS_PER_MACHINE']}"]

    return {
        "host, alone": ([host_command(args)], base),
        "host, alone, TFT_HOSTS_PER_MACHINE=2": ([host_command(args)], share),
        "host, alone, OMP_WAIT_POLICY=PASSIVE": ([host_command(args)], passive),
        "container, alone": ([docker("alone")], base),
        "2 host processes, all cores each": ([host_command(args)] * 2, base),
        "2 host processes, all cores, OMP_WAIT_POLICY=PASSIVE": ([host_command(args)] * 2, passive),
        "2 host processes, TFT_HOSTS_PER_MACHINE=2": ([host_command(args)] * 2, share),
        "2 containers, all cores each": ([docker("a"), docker("b")], base),
        "2 containers, TFT_HOSTS_PER_MACHINE=2": (
            [docker("a", env_flags(share)), docker("b", env_flags(share))],
            base,
        ),
        f"2 containers, --cpus {half}": (
            [docker("a", ["--cpus", half]), docker("b", ["--cpus", half])],
            base,
        ),
    }


def compose_two_node(args: argparse.Namespace, hosts_per_machine: str) -> float:
    """Wall seconds of the two-node compose job; both hosts must exit 0."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("TFT_STATE_DIR")) as tmp:
        test_dir = Path(tmp) / "test_dir"
        shutil.copytree(ROOT / "local_test" / "test_dir", test_dir)
        shutil.rmtree(test_dir / "input" / "data", ignore_errors=True)
        (test_dir / "input" / "data" / "train").mkdir(parents=True)
        shutil.copy(args.data, test_dir / "input" / "data" / "train" / "stallion.parquet")
        for sub in ("model", "checkpoints", "output/algo-1", "output/algo-2"):
            (test_dir / sub).mkdir(parents=True, exist_ok=True)
        config = test_dir / "input" / "config" / "hyperparameters.json"
        config.write_text(json.dumps(hyperparameters(args.epochs, args.batches)))
        env = {
            **os.environ,
            "TFT_TEST_DIR": str(test_dir),
            "TFT_CPU_IMAGE": args.image,
            "TFT_HOSTS_PER_MACHINE": hosts_per_machine,
        }
        compose = ["docker", "compose", "-p", "tft-bench"]
        for file in COMPOSE_FILES:
            compose += ["-f", str(ROOT / file)]
        started = time.perf_counter()
        subprocess.run(
            [*compose, "up", "--no-build", "--abort-on-container-failure"],
            env=env,
            capture_output=True,
            check=False,
        )
        seconds = time.perf_counter() - started
        codes = subprocess.run(
            [*compose, "ps", "-a", "--format", "{{.ExitCode}}"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        subprocess.run([*compose, "down"], env=env, capture_output=True, check=True)
        if codes != ["0", "0"]:
            raise SystemExit(
                f"two-node compose job (hosts per machine {hosts_per_machine}): {codes}"
            )
        return round(seconds, 1)


def table(results: dict[str, Any]) -> str:
    alone = results["cases"]["host, alone"]["windows_per_s"]
    lines = [
        "| case | threads | windows/s each (runs) | total windows/s | vs host alone "
        "| CPU s per s each | windows per CPU s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in results["cases"].items():
        lines.append(
            f"| {name} | {row['threads']} | {row['windows_per_s']:.0f} ({row['runs']}) | "
            f"{row['total_windows_per_s']:.0f} | {row['total_windows_per_s'] / alone:.2f}x | "
            f"{row['cpu_per_train_s']:.2f} | {row['windows_per_s'] / row['cpu_per_train_s']:.0f} |"
        )
    compose = results["compose_two_node_s"]
    lines += [
        "",
        "| two-node compose job | wall seconds |",
        "| --- | --- |",
        f"| before: TFT_HOSTS_PER_MACHINE=1 | {compose['before']} |",
        f"| after: TFT_HOSTS_PER_MACHINE=2 | {compose['after']} |",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", default=os.environ.get("STALLION_PARQUET"))
    parser.add_argument("--image", default=IMAGE)
    parser.add_argument("--epochs", type=int, default=3, help="epochs (the first is warm-up)")
    parser.add_argument("--batches", type=int, default=15, help="batches per epoch")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--output", type=Path, default=ROOT / "bench" / "results" / "container.json"
    )
    args = parser.parse_args()
    if not args.data or not Path(args.data).is_file():
        parser.error("give --data or set STALLION_PARQUET to the Stallion parquet file")
    if args.worker:
        import logging
        import warnings

        logging.disable(logging.WARNING)
        warnings.filterwarnings("ignore")
        print(json.dumps(worker(args.data, args.epochs, args.batches)))
        return 0

    runs: dict[str, list[list[dict[str, Any]]]] = {}
    compose: dict[str, list[float]] = {"before": [], "after": []}
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    for repeat in range(args.repeats):
        for name, (commands, env) in cases(args).items():
            runs.setdefault(name, []).append(run_together(commands, env))
            print(f"[{repeat + 1}/{args.repeats}] {name}: {runs[name][-1]}", flush=True)
        for label, value in (("before", "1"), ("after", "2")):
            compose[label].append(compose_two_node(args, value))
            print(
                f"[{repeat + 1}/{args.repeats}] two-node compose, {label}: {compose[label][-1]} s"
            )

    summary = {}
    for name, repeats in runs.items():
        per_process = [statistics.mean(r["windows_per_s"] for r in rep) for rep in repeats]
        summary[name] = {
            "threads": repeats[0][0]["threads"],
            "windows_per_s": statistics.median(per_process),
            "runs": ", ".join(f"{v:.0f}" for v in per_process),
            "total_windows_per_s": statistics.median(
                sum(r["windows_per_s"] for r in rep) for rep in repeats
            ),
            "cpu_per_train_s": statistics.median(
                statistics.mean(r["cpu_per_train_s"] for r in rep) for rep in repeats
            ),
        }
    results = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_average_before": round(load_before, 2),
            "load_average_after": round(os.getloadavg()[0], 2),
            "minutes": round((time.perf_counter() - started) / 60, 1),
        },
        "preset": hyperparameters(args.epochs, args.batches),
        "repeats": args.repeats,
        "cases": summary,
        "compose_two_node_s": {k: statistics.median(v) for k, v in compose.items()},
        "compose_two_node_runs_s": compose,
    }
    from throughput import write_results

    write_results(args.output, results, table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
