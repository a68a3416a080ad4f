"""On a GPU: the batched variable selection (speedups/variable_selection.py) gives the original
model's outputs and gradients there too (its GPU path differs from the CPU one), for the Stallion
model.

    python bench/gpu_fused_check.py --data STALLION_PARQUET
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

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
from tft_sagemaker.speedups.variable_selection import fuse_variable_selection  # noqa: E402


def main() -> int:
    import pandas as pd

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    args = parser.parse_args()
    config = build_config({"preset": "stallion", "dropout": "0"}, None, PRESET_VALUES)
    raw = pd.read_parquet(args.data)
    frame = prepare_training_frame(raw, config.data)[0]
    dataset = build_training_dataset(split_holdout(frame, config.data), config.data)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    plain = build_model(dataset, settle(config, len(dataset))).to(device)
    fused = copy.deepcopy(plain)
    fuse_variable_selection(fused)
    x, y = next(iter(dataset.to_dataloader(train=True, batch_size=128)))
    x = {k: v.to(device) if torch.is_tensor(v) else v for k, v in x.items()}
    target = y[0].to(device)
    worst = 0.0
    plain.eval(), fused.eval()  # eval: predictions (cuDNN's LSTM has no backward in eval mode)
    with torch.no_grad():
        p0, p1 = plain(x)["prediction"], fused(x)["prediction"]
    worst = float((p0 - p1).abs().max() / p0.abs().max())
    grads = []
    for model in (plain, fused):  # train mode with dropout 0: loss gradients
        model.train()
        model.zero_grad()
        model.loss(model(x)["prediction"], (target, None)).backward()
        grads.append(
            [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]
        )
    scale = max(float(g.abs().max()) for g in grads[0])
    differences = (float((a - b).abs().max()) for a, b in zip(*grads, strict=True))
    worst = max(worst, max(differences) / scale)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    print(
        f"fused vs plain on {name}: largest relative difference "
        f"of predictions and gradients {worst:.2e}"
    )
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
