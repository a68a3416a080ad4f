"""On a GPU: the training step of the library and of the static_shapes lever in each
compile_mode, for the tutorial model (Stallion, batch 128) and the large panel (35,000 series,
hidden 128, batch 1024, bf16): windows/s, GPU busy share and kernels per step (torch.profiler),
whether the static step reads the host (torch.cuda.set_sync_debug_mode("error")), and its loss and
gradients against the library's on the GPU. Model step only (forward, loss, backward, fused
Adam), batches gathered on the GPU by WindowBatcher, the CPU levers engaged as in the job.

    python bench/gpu_step.py --data STALLION --merge THROUGHPUT_JSON --output OUT_JSON

`--merge`: bench/throughput.py's JSON (the same fields as the CPU bench), written to `--output`
with these figures under "gpu_step". On a CPU (`--steps 2 --large-series 350`) it checks that the
script runs; the GPU fields are then null.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "code"))

from tft_sagemaker.config import build_config  # noqa: E402
from tft_sagemaker.dataset import build_training_dataset  # noqa: E402
from tft_sagemaker.job_data import split_holdout  # noqa: E402
from tft_sagemaker.model import build_model  # noqa: E402
from tft_sagemaker.preparation import prepare_training_frame  # noqa: E402
from tft_sagemaker.presets import PRESET_VALUES  # noqa: E402
from tft_sagemaker.recipe import settle  # noqa: E402
from tft_sagemaker.speedups import engage  # noqa: E402
from tft_sagemaker.speedups.batches import WindowBatcher  # noqa: E402
from tft_sagemaker.speedups.static_shapes import (  # noqa: E402
    COMPILE_MODES,
    library_loss,
    pad_batch,
    static_step,
    step_weights,
)
from tft_sagemaker.synthetic import make_panel  # noqa: E402

MODES = ("library", *COMPILE_MODES)
TUTORIAL = {"hidden_size": "16", "attention_head_size": "2", "hidden_continuous_size": "8"}
LARGE = {"hidden_size": "128", "attention_head_size": "4", "hidden_continuous_size": "64"}


@functools.cache  # the large panel takes half a minute to prepare: once for every mode
def dataset_and_config(name: str, data: str, series: int) -> tuple[Any, Any]:
    import pandas as pd

    if name == "tutorial":
        config = build_config({"preset": "stallion", **TUTORIAL}, None, PRESET_VALUES)
        raw = pd.read_parquet(data)
    else:
        config = build_config({"preset": "synthetic", **LARGE}, None, PRESET_VALUES)
        raw = make_panel(n_stores=series // 10, n_products=10, n_weeks=60)
    frame = prepare_training_frame(raw, config.data)[0]
    return build_training_dataset(split_holdout(frame, config.data), config.data), config


def make_step(model: Any, mode: str, lengths: tuple[int, int]) -> Any:
    """forward + loss of a batch, as the library's step or the static step in `mode`."""
    if mode == "library":
        return lambda x, y: library_loss(model, model(x)["prediction"], y, x["decoder_lengths"])
    step = static_step
    if mode != "eager":
        step = torch.compile(static_step, mode=mode, fullgraph=True)

    def run(x: Any, y: Any) -> torch.Tensor:
        return step(model, *pad_batch(x, y, *lengths), step_weights(model))[0]

    return run


def measure(name: str, mode: str, args: argparse.Namespace, device: torch.device) -> dict:
    dataset, config = dataset_and_config(name, args.data, args.large_series)
    batch_size, precision = (128, "32") if name == "tutorial" else (1024, "bf16")
    torch.manual_seed(0)
    model = build_model(dataset, settle(config, len(dataset)))
    engage(config.speedups, model)  # the CPU levers, as the job engages them
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    batcher = WindowBatcher(dataset, device=device)
    lengths = (dataset.max_encoder_length, dataset.max_prediction_length)
    step = make_step(model, mode, lengths)
    generator = torch.Generator().manual_seed(0)
    batches = [
        batcher(torch.randint(len(batcher), (batch_size,), generator=generator)) for _ in range(8)
    ]
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )

    def train(n: int) -> None:
        for i in range(n):
            x, y = batches[i % len(batches)]
            with autocast:
                loss = step(x, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    started = time.perf_counter()
    train(args.warmup)  # compilation, CUDA graph recording, allocator
    sync()
    warmup_s = time.perf_counter() - started
    started = time.perf_counter()
    train(args.steps)
    sync()
    seconds = time.perf_counter() - started
    result: dict[str, Any] = {
        "model": name,
        "mode": mode,
        "batch_size": batch_size,
        "precision": precision,
        "windows": len(dataset),
        "parameters": sum(p.numel() for p in model.parameters()),
        "warmup_s": round(warmup_s, 2),
        "windows_per_s": round(args.steps * batch_size / seconds, 1),
        "gpu_busy_share": None,
        "kernels_per_step": None,
        "host_sync_free": None,
    }
    if device.type == "cuda":
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as profile:
            started = time.perf_counter()
            train(args.profile_steps)
            sync()
            wall = time.perf_counter() - started
        kernels = [e for e in profile.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.device_time for e in kernels) / 1e6  # microseconds; one stream
        result["gpu_busy_share"] = round(busy / wall, 3)
        result["kernels_per_step"] = round(len(kernels) / args.profile_steps)
        if mode != "library":
            try:
                torch.cuda.set_sync_debug_mode("error")
                train(1)
                result["host_sync_free"] = True
            except RuntimeError as err:
                result["host_sync_free"] = f"no: {str(err).splitlines()[0]}"
            finally:
                torch.cuda.set_sync_debug_mode("default")
    return result


def equivalence(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The static step's loss and gradients against the library's, on the device (float32,
    dropout 0, the tutorial model): the largest difference relative to the largest value."""
    dataset, _ = dataset_and_config("tutorial", args.data, 0)
    config = build_config({"preset": "stallion", **TUTORIAL, "dropout": "0"}, None, PRESET_VALUES)
    torch.manual_seed(0)
    model = build_model(dataset, settle(config, len(dataset)))
    engage(config.speedups, model)
    model = model.to(device).train()
    x, y = WindowBatcher(dataset, device=device)(torch.arange(0, len(dataset), 37)[:256])
    lengths = (dataset.max_encoder_length, dataset.max_prediction_length)
    losses, grads = [], []
    for mode in ("library", "eager"):
        model.zero_grad()
        loss = make_step(model, mode, lengths)(x, y)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    scale = max(float(g.abs().max()) for g in grads[0])
    worst = max(float((a - b).abs().max()) for a, b in zip(*grads, strict=True)) / scale
    return {
        "loss_relative_difference": abs(losses[1] - losses[0]) / abs(losses[0]),
        "gradient_relative_difference": worst,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the Stallion parquet file")
    parser.add_argument("--merge", type=Path, help="bench/throughput.py's JSON")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--profile-steps", type=int, default=10)
    parser.add_argument("--large-series", type=int, default=35_000)
    parser.add_argument(
        "--modes", nargs="+", default=["library", "eager", "reduce-overhead"], choices=MODES
    )
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "equivalence": equivalence(args, device),
        "runs": [],
    }
    print(json.dumps(results["equivalence"]), flush=True)
    for name in ("tutorial", "large panel"):
        for mode in args.modes:
            try:
                run = measure(name, mode, args, device)
            except Exception as err:  # a mode this GPU or torch cannot run: recorded, not fatal
                run = {"model": name, "mode": mode, "error": f"{type(err).__name__}: {err}"[:300]}
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
            torch._dynamo.reset()
    merged = json.loads(args.merge.read_text()) if args.merge and args.merge.exists() else {}
    merged["gpu_step"] = results
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(merged, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
