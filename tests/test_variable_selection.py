"""fuse_variable_selection: batched variable selection computes what the original computes.

Each test builds a model, deep-copies it, fuses the copy and compares the two: eval outputs
(prediction and the interpretation outputs), train-mode (dropout 0) loss and every gradient, and
a few Adam steps. (What it buys: bench/ablation.py.)
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from pytorch_forecasting import TemporalFusionTransformer, TimeSeriesDataSet
from pytorch_forecasting.metrics import QuantileLoss
from pytorch_forecasting.models.temporal_fusion_transformer.sub_modules import (
    GatedResidualNetwork,
    VariableSelectionNetwork,
)

from tft_sagemaker.config import build_config
from tft_sagemaker.dataset import build_training_dataset
from tft_sagemaker.preparation import prepare_training_frame
from tft_sagemaker.presets import PRESET_VALUES
from tft_sagemaker.speedups import variable_selection
from tft_sagemaker.speedups.embedding_bags import CountMatmulEmbeddingBag, use_count_matmul
from tft_sagemaker.speedups.variable_selection import (
    FusedVariableSelectionNetwork,
    fuse_variable_selection,
    fusion_summary,
    unfuse_variable_selection,
)

OUTPUT_KEYS = (
    "prediction",
    "encoder_attention",
    "decoder_attention",
    "static_variables",
    "encoder_variables",
    "decoder_variables",
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _quiet_single_thread() -> Iterator[None]:
    """One torch thread: these tiny ops gain nothing from two, and on a shared machine OpenMP's
    waiting threads slow them down a hundredfold. Lightning's notes on loss modules hidden."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# Comparing an original model with its fused copy
# ---------------------------------------------------------------------------------------------
def fused_copy(
    model: TemporalFusionTransformer,
    transform: Callable[..., Any] = fuse_variable_selection,
    **kwargs: Any,
) -> TemporalFusionTransformer:
    fused = copy.deepcopy(model)
    transform(fused, **kwargs)
    return fused


def n_fused(model: torch.nn.Module) -> int:
    return sum(type(m) is FusedVariableSelectionNetwork for m in model.modules())


def to_dtype(batch: Any, dtype: torch.dtype) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(dtype) if batch.is_floating_point() else batch
    if isinstance(batch, dict):
        return {k: to_dtype(v, dtype) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_dtype(v, dtype) for v in batch)
    return batch


def take_batches(dataset: TimeSeriesDataSet, n: int, batch_size: int = 64) -> list:
    torch.manual_seed(0)
    loader = dataset.to_dataloader(train=True, batch_size=batch_size, num_workers=0)
    return [batch for _, batch in zip(range(n), loader, strict=False)]


def loss_of(model: TemporalFusionTransformer, batch: Any) -> torch.Tensor:
    x, y = batch
    return model.loss(model(x)["prediction"], y)


def eval_outputs(model, batch) -> dict[str, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        output = model(batch[0])
    return {key: output[key] for key in OUTPUT_KEYS}


def gradients(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    """Train mode (the models have dropout 0): the loss and every parameter's gradient."""
    model.train()
    model.zero_grad(set_to_none=True)
    loss = loss_of(model, batch)
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


def assert_rounding(
    name: str, actual, expected, reference, scale: float = 0.0, factor: float = 4.0
) -> None:
    """float32 `actual` (fused) is as close to the float64 `reference` as the original is.

    The original model's own float32 result differs from its float64 result by up to ~4e-5
    (relative) on Stallion's predictions, more than assert_close's default rtol (1.3e-6): any
    change in the order of float32 operations moves outputs that much. So the fused model may
    differ from the original by rounding only if its error is of the original's size, or
    below 1e-6 of `scale` (at least the reference's largest value): rounding anywhere in the
    network reaches every gradient, and values that are zero in exact arithmetic (the gradient
    of an attention key's bias) are pure float32 noise.
    """
    assert actual.dtype == expected.dtype == torch.float32, name
    assert actual.shape == expected.shape == reference.shape, name
    if reference.numel() == 0:
        return
    reference = reference.double()
    own_error = (expected.double() - reference).abs().max().item()
    error = (actual.double() - reference).abs().max().item()
    floor = 1e-6 * max(scale, reference.abs().max().item())
    if os.environ.get("FUSED_ROUNDING_LOG"):
        print(f"ROUNDING {name} {error:.3g} {own_error:.3g} {floor:.3g}")
    assert error <= factor * own_error + floor, (
        f"{name}: fused float32 is {error:.3g} from float64, original float32 {own_error:.3g}"
    )


def assert_same_outputs(original, fused, batch, exact: bool = False) -> None:
    """Eval outputs bit for bit (`exact`), or within a float32 rounding tolerance."""
    expected, actual = eval_outputs(original, batch), eval_outputs(fused, batch)
    for key in OUTPUT_KEYS:
        if exact:
            assert torch.equal(actual[key], expected[key]), key
        else:
            torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-4)


def assert_same_training(original, fused, batches, lr: float = 0.03) -> None:
    """Adam steps (float64) on both copies leave equal parameters.

    Adam turns the float64 noise in gradients that are zero in exact arithmetic (attention key
    biases) into steps of ~1e-11, hence the absolute 1e-8 here (float32 differs by ~1e-5).
    """
    optimizers = [torch.optim.Adam(m.parameters(), lr=lr) for m in (original, fused)]
    for batch in batches:
        for model, optimizer in zip((original, fused), optimizers, strict=True):
            model.train()
            optimizer.zero_grad()
            loss_of(model, batch).backward()
            optimizer.step()
    pairs = zip(original.named_parameters(), fused.named_parameters(), strict=True)
    for (name, p), (_, q) in pairs:
        torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-8, msg=lambda m, n=name: f"{n}: {m}")


def assert_tight(actual: torch.Tensor, expected: torch.Tensor, scale: float = 0.0) -> None:
    """float64: equal to 1e-9 relative, or 1e-11 of `scale`, the magnitude of the values
    compared (float64 rounding is ~1e-16; float32's, ~1e-7)."""
    scale = max(scale, expected.abs().max().item() if expected.numel() else 0.0)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-11 * scale)


def check_equivalence(
    model: TemporalFusionTransformer,
    batches: list,
    transform: Callable[..., Any] = fuse_variable_selection,
    **fuse_kwargs: Any,
):
    """Original vs fused (`transform`ed) copy, in float64 (tight) and float32 (within rounding).

    float64: eval outputs, train loss and every gradient, and three Adam steps agree to 1e-10,
    which only the same mathematics gives. float32: the fused model's outputs and gradients are
    as close to the float64 result as the original's own.
    """
    fused = fused_copy(model, transform, **fuse_kwargs)
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert fused.state_dict().keys() == model.state_dict().keys()
    model64, fused64 = copy.deepcopy(model).double(), copy.deepcopy(fused).double()
    for batch in batches:
        batch64 = to_dtype(batch, torch.float64)
        reference = eval_outputs(model64, batch64)
        expected, actual = eval_outputs(model, batch), eval_outputs(fused, batch)
        for key, value in eval_outputs(fused64, batch64).items():
            assert_tight(value, reference[key])
            assert_rounding(key, actual[key], expected[key], reference[key])

        reference_loss, reference_grads = gradients(model64, batch64)
        fused_loss, fused_grads = gradients(fused64, batch64)
        assert_tight(fused_loss, reference_loss)
        expected_loss, expected_grads = gradients(model, batch)
        actual_loss, actual_grads = gradients(fused, batch)
        assert_rounding("loss", actual_loss, expected_loss, reference_loss)
        scale = max(g.abs().max().item() for g in reference_grads.values() if g is not None)
        for name, reference_grad in reference_grads.items():
            grads = (fused_grads[name], expected_grads[name], actual_grads[name])
            assert all((g is None) == (reference_grad is None) for g in grads), name
            if reference_grad is not None:
                assert_tight(fused_grads[name], reference_grad, scale)
                actual_grad, expected_grad = actual_grads[name], expected_grads[name]
                assert_rounding(name, actual_grad, expected_grad, reference_grad, scale)
    assert_same_training(model64, fused64, [to_dtype(b, torch.float64) for b in batches])
    return fused


# ---------------------------------------------------------------------------------------------
# Stallion, as the tutorial builds it
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stallion(stallion_path: Path) -> TimeSeriesDataSet:
    config = build_config({"preset": "stallion"}, {}, PRESET_VALUES).data
    raw = pd.read_parquet(stallion_path)
    frame = prepare_training_frame(raw, config)[0]
    cutoff = frame["time_idx"].max() - config.max_prediction_length  # the tutorial's training set
    return build_training_dataset(frame[frame["time_idx"] <= cutoff], config)


def stallion_model(dataset: TimeSeriesDataSet, dropout: float = 0.0) -> TemporalFusionTransformer:
    model = build_config({"preset": "stallion"}, {}, PRESET_VALUES).model
    torch.manual_seed(1)
    return TemporalFusionTransformer.from_dataset(
        dataset,
        hidden_size=model.hidden_size,
        attention_head_size=model.attention_head_size,
        hidden_continuous_size=model.hidden_continuous_size,
        dropout=dropout,
        loss=QuantileLoss(quantiles=model.quantiles),
        learning_rate=model.learning_rate,
    )


def test_stallion_equivalence(stallion: TimeSeriesDataSet) -> None:
    model = stallion_model(stallion)
    batches = take_batches(stallion, 2)
    fused = check_equivalence(model, batches)

    summary = fusion_summary(fused)
    sizes = f"grn {model.hparams.hidden_continuous_size}->{model.hparams.hidden_size}"
    assert summary["encoder_variable_selection"]["fused"] == [
        f"{sizes}: time_idx, price_regular, discount_in_percent, relative_time_idx, volume, "
        "log_volume, industry_volume, soda_volume, avg_max_temp, avg_volume_by_agency, "
        "avg_volume_by_sku"
    ]
    assert summary["decoder_variable_selection"]["fused"] == [
        f"{sizes}: time_idx, price_regular, discount_in_percent, relative_time_idx"
    ]
    assert summary["static_variable_selection"]["fused"] == [
        f"{sizes}: avg_population_2017, avg_yearly_household_income_2017, encoder_length, "
        "volume_center, volume_scale"
    ]
    # embedded categoricals have sizes of their own: their ResampleNorms run alone
    assert summary["encoder_variable_selection"]["single"] == [
        "special_days: no variable of the same shape",
        "month: no variable of the same shape",
    ]


def test_stallion_dropout(stallion: TimeSeriesDataSet) -> None:
    """With dropout, eval outputs are equal and training draws a batched dropout mask."""
    model = stallion_model(stallion, dropout=0.1)
    fused = fused_copy(model)
    batch = take_batches(stallion, 1)[0]
    assert_same_outputs(model, fused, batch)
    fused.train()
    with torch.no_grad():
        first, second = fused(batch[0])["prediction"], fused(batch[0])["prediction"]
    assert torch.isfinite(first).all() and not torch.equal(first, second)


def test_stallion_accelerator_formulas(
    stallion: TimeSeriesDataSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GLU as accelerators run it (one F.glu, then + residual), checked here on CPU."""
    monkeypatch.setattr(variable_selection, "_split_glu", lambda x: False)
    check_equivalence(stallion_model(stallion), take_batches(stallion, 1))


def test_stallion_count_matmul_embedding_bags(stallion: TimeSeriesDataSet) -> None:
    """special_days (12 flags per step) summed by counts @ weight: the same outputs, gradients
    and Adam steps as the library's EmbeddingBag, alone and with fused variable selection."""
    model = stallion_model(stallion)
    batches = take_batches(stallion, 2)
    swapped = check_equivalence(model, batches, use_count_matmul)
    bags = [m for m in swapped.modules() if isinstance(m, CountMatmulEmbeddingBag)]
    assert len(bags) == 1 and bags[0] is swapped.input_embeddings["special_days"]
    original = stallion_model(stallion)  # (a used model no longer deep-copies)
    both = fused_copy(original, use_count_matmul)
    fuse_variable_selection(both)
    assert sum(isinstance(m, CountMatmulEmbeddingBag) for m in both.modules()) == 1
    assert n_fused(both) == 3
    assert_same_outputs(original, both, batches[0])
    state = pickle.loads(pickle.dumps(both.state_dict()))
    assert state.keys() == model.state_dict().keys()


# ---------------------------------------------------------------------------------------------
# A small synthetic panel in many shapes
# ---------------------------------------------------------------------------------------------
def synthetic_frame(n_series: int = 12, length: int = 30, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_series):
        t = np.arange(length)
        level = rng.uniform(5, 50)
        rows.append(
            pd.DataFrame(
                {
                    "series": f"s{s}",
                    "region": f"r{s % 3}",
                    "kind": f"k{s % 5}",
                    "time_idx": t,
                    "size": rng.uniform(1, 3),
                    "age": rng.uniform(0, 10),
                    "price": rng.uniform(1, 2, length),
                    "discount": rng.uniform(0, 0.3, length),
                    "temperature": rng.normal(20, 5, length),
                    "promo": rng.choice(["no", "yes"], length),
                    "weekday": [f"d{i % 7}" for i in t],
                    "target": level + np.sin(t / 3) * 3 + rng.normal(0, 1, length),
                    "other": rng.normal(0, 1, length),
                }
            )
        )
    frame = pd.concat(rows, ignore_index=True)
    for column in ("series", "region", "kind", "promo", "weekday"):
        frame[column] = frame[column].astype("category")
    return frame


FULL = {
    "static_categoricals": ["region", "kind"],
    "static_reals": ["size", "age"],
    "time_varying_known_categoricals": ["promo", "weekday"],
    "time_varying_known_reals": ["time_idx", "price", "discount", "temperature"],
    "time_varying_unknown_reals": ["target", "other"],
}
REALS_ONLY = {  # no categoricals anywhere
    "static_reals": ["size", "age"],
    "time_varying_known_reals": ["time_idx", "price", "discount", "temperature"],
    "time_varying_unknown_reals": ["target", "other"],
}
NO_STATIC_REALS = {  # nor target scales / encoder length: only categoricals are static
    **{k: v for k, v in FULL.items() if k != "static_reals"},
    "add_target_scales": False,
    "add_encoder_length": False,
}
NO_STATICS = {  # no static variable at all: the static VSN is never called
    **{k: v for k, v in REALS_ONLY.items() if k != "static_reals"},
    "add_target_scales": False,
    "add_encoder_length": False,
}
ONE_DECODER_INPUT = {  # the decoder VSN has one input: no variable selection there
    "static_categoricals": ["region"],
    "static_reals": ["size", "age"],
    "time_varying_known_reals": ["time_idx"],
    "time_varying_unknown_reals": ["target", "other", "price"],
    "add_relative_time_idx": False,
}


def synthetic_dataset(spec: dict[str, Any]) -> TimeSeriesDataSet:
    options = {
        "add_relative_time_idx": True,
        "add_target_scales": True,
        "add_encoder_length": True,
        **spec,
    }
    return TimeSeriesDataSet(
        synthetic_frame(),
        time_idx="time_idx",
        target="target",
        group_ids=["series"],
        min_encoder_length=6,
        max_encoder_length=10,
        min_prediction_length=1,
        max_prediction_length=4,
        **options,
    )


def synthetic_model(dataset: TimeSeriesDataSet, **hparams: Any) -> TemporalFusionTransformer:
    torch.manual_seed(2)
    options = {
        "hidden_size": 16,
        "attention_head_size": 2,
        "hidden_continuous_size": 8,
        "dropout": 0.0,
    }
    return TemporalFusionTransformer.from_dataset(dataset, **{**options, **hparams})


CASES = {
    "h8_hc4": (FULL, {"hidden_size": 8, "hidden_continuous_size": 4, "attention_head_size": 1}),
    "h16_hc16": (FULL, {"hidden_size": 16, "hidden_continuous_size": 16}),
    "h32_hc8_lstm2": (FULL, {"hidden_size": 32, "hidden_continuous_size": 8, "lstm_layers": 2}),
    "h8_hc12_downsample": (FULL, {"hidden_size": 8, "hidden_continuous_size": 12}),
    "reals_only": (REALS_ONLY, {}),
    "no_static_reals": (NO_STATIC_REALS, {}),
    "no_statics": (NO_STATICS, {"hidden_size": 8, "hidden_continuous_size": 4}),
    "one_decoder_input": (ONE_DECODER_INPUT, {}),
    # embedded categoricals of one size batch too: resampled (4 -> 8) and not (8 -> 8)
    "categoricals_batched": (
        FULL,
        {
            "hidden_size": 8,
            "hidden_continuous_size": 4,
            "attention_head_size": 1,
            "embedding_sizes": {
                "region": (3, 8),
                "kind": (5, 8),
                "promo": (2, 4),
                "weekday": (7, 4),
            },
        },
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_synthetic_equivalence(case: str) -> None:
    spec, hparams = CASES[case]
    dataset = synthetic_dataset(spec)
    model = synthetic_model(dataset, **hparams)
    fused = check_equivalence(model, take_batches(dataset, 2, batch_size=32))
    assert n_fused(fused) >= 1
    if case == "categoricals_batched":
        summary = fusion_summary(fused)
        assert "norm 8->8: region, kind" in summary["static_variable_selection"]["fused"]
        assert "norm 4->8: promo, weekday" in summary["encoder_variable_selection"]["fused"]


def test_per_variable_sizes_fall_back() -> None:
    """hidden_continuous_sizes: the odd-sized variable runs alone, same-sized ones batch."""
    dataset = synthetic_dataset(FULL)
    sizes = {"price": 4, "discount": 4, "temperature": 12}
    model = synthetic_model(dataset, hidden_continuous_sizes=sizes)
    fused = check_equivalence(model, take_batches(dataset, 2, batch_size=32))
    encoder = fusion_summary(fused)["encoder_variable_selection"]
    assert encoder["fused"] == [
        "grn 8->16: time_idx, relative_time_idx, target, other",
        "grn 4->16: price, discount",
    ]
    assert "temperature: no variable of the same shape" in encoder["single"]


def test_shared_single_variable_networks() -> None:
    """share_single_variable_networks: shared GRNs run per variable, or batched on request."""
    dataset = synthetic_dataset(FULL)
    model = synthetic_model(dataset, share_single_variable_networks=True)
    fused = check_equivalence(model, take_batches(dataset, 1, batch_size=32))
    for name in ("encoder_variable_selection", "decoder_variable_selection"):
        summary = fusion_summary(fused)[name]
        assert summary["fused"] == []
        assert all(line.endswith("not fused") for line in summary["single"])
    model = synthetic_model(dataset, share_single_variable_networks=True)  # not trained yet
    shared = check_equivalence(model, take_batches(dataset, 1, batch_size=32), fuse_shared=True)
    assert fusion_summary(shared)["encoder_variable_selection"]["fused"]


class ScaledGRN(GatedResidualNetwork):
    """A custom single-variable network: must keep its own forward."""

    def forward(self, x, context=None, residual=None):
        return super().forward(x, context, residual) * 0.5


def test_custom_modules_fall_back() -> None:
    dataset = synthetic_dataset(FULL)
    model = synthetic_model(dataset)
    encoder = model.encoder_variable_selection
    custom = ScaledGRN(8, 8, 16, dropout=0.0)
    custom.load_state_dict(encoder.single_variable_grns["price"].state_dict())
    encoder.single_variable_grns["price"] = custom
    torch.nn.init.normal_(encoder.prescalers["discount"].weight)  # prescalers are shared
    calls: list[int] = []
    hooked = encoder.single_variable_grns["temperature"]
    hooked.register_forward_hook(lambda *_: calls.append(1))
    batch = take_batches(dataset, 1, batch_size=32)[0]
    fused = check_equivalence(model, [batch])
    summary = fusion_summary(fused)["encoder_variable_selection"]
    assert "price: custom module ScaledGRN" in summary["single"]
    assert "temperature: non-standard GatedResidualNetwork" in summary["single"]
    assert "discount" in summary["fused"][0]
    calls.clear()
    with torch.no_grad():
        fused(batch[0])
    assert calls == [1], "the hooked network runs its own forward, hook included"


def test_subclassed_vsn_and_refusing() -> None:
    dataset = synthetic_dataset(FULL)
    model = synthetic_model(dataset)
    fused = fused_copy(model)
    assert n_fused(fused) == 3
    fuse_variable_selection(fused)  # again: re-plans, same result
    assert n_fused(fused) == 3
    batch = take_batches(dataset, 1, batch_size=32)[0]
    assert_same_outputs(model, fused, batch)
    unfuse_variable_selection(fused)
    assert n_fused(fused) == 0
    assert all(
        type(m) is VariableSelectionNetwork
        for m in fused.modules()
        if isinstance(m, VariableSelectionNetwork)
    )
    assert_same_outputs(model, fused, batch)


def test_global_hooks_use_the_original_path() -> None:
    dataset = synthetic_dataset(FULL)
    model = synthetic_model(dataset)
    fused = fused_copy(model)
    batch = take_batches(dataset, 1, batch_size=32)[0]
    model.eval()
    fused.eval()
    seen: list[str] = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, *_: seen.append(type(module).__name__)
    )
    try:
        with torch.no_grad():
            expected = model(batch[0])["prediction"]
            original_calls = list(seen)
            seen.clear()
            actual = fused(batch[0])["prediction"]
    finally:
        handle.remove()
    # every module's own forward ran, as in the original: the fused VSNs took its path
    assert seen.count("FusedVariableSelectionNetwork") == 3
    assert [name.removeprefix("Fused") for name in seen] == original_calls
    torch.testing.assert_close(actual, expected)


def test_inference_mode_then_training() -> None:
    """A first forward under inference_mode (trainer.predict, trainer.validate) must not leave
    cached tensors that training cannot save for backward."""
    variable_selection._INTERPOLATION.clear()
    dataset = synthetic_dataset(FULL)
    fused = fused_copy(synthetic_model(dataset))
    never_inferred = copy.deepcopy(fused)
    batch = take_batches(dataset, 1, batch_size=32)[0]
    fused.eval()
    with torch.inference_mode():
        fused(batch[0])
    for model in (fused, never_inferred):
        model.train()
        torch.manual_seed(0)  # the same dropout draws
        loss_of(model, batch).backward()
    gradients = {name: p.grad for name, p in never_inferred.named_parameters()}
    for name, parameter in fused.named_parameters():
        torch.testing.assert_close(parameter.grad, gradients[name], msg=name)


def test_autocast() -> None:
    """Mixed precision (bfloat16 autocast on CPU): same outputs within bfloat16's rounding."""
    dataset = synthetic_dataset(FULL)
    model = synthetic_model(dataset)
    fused = fused_copy(model)
    batch = take_batches(dataset, 1, batch_size=32)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, actual = eval_outputs(model, batch), eval_outputs(fused, batch)
        model.train()
        fused.train()
        loss_of(model, batch).backward()
        loss_of(fused, batch).backward()
    for key in OUTPUT_KEYS:
        torch.testing.assert_close(actual[key], expected[key], rtol=0.05, atol=0.05)
    for p, q in zip(model.parameters(), fused.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None)


def test_interpolation_matrix_is_exact() -> None:
    from tft_sagemaker.speedups.variable_selection import _interpolation_matrix

    for n, m in [(8, 16), (4, 8), (12, 8), (5, 5), (3, 1), (1, 4), (16, 13)]:
        x = torch.randn(64, n)
        expected = F.interpolate(x.unsqueeze(1), m, mode="linear", align_corners=True).squeeze(1)
        torch.testing.assert_close(x @ _interpolation_matrix(n, m, x), expected)


# ---------------------------------------------------------------------------------------------
# Checkpoints, copies, pickles, DDP
# ---------------------------------------------------------------------------------------------
def test_state_dict_loads_into_plain_model() -> None:
    dataset = synthetic_dataset(FULL)
    model = synthetic_model(dataset)
    fused = fused_copy(model)
    batches = take_batches(dataset, 2, batch_size=32)
    optimizer = torch.optim.Adam(fused.parameters(), lr=0.01)
    for batch in batches:  # train the fused model a little, so the weights are its own
        optimizer.zero_grad()
        loss_of(fused, batch).backward()
        optimizer.step()
    plain = synthetic_model(dataset)
    assert type(plain.encoder_variable_selection) is VariableSelectionNetwork
    plain.load_state_dict(fused.state_dict())
    assert_same_outputs(plain, fused, batches[0])


def test_lightning_checkpoint_loads_into_plain_model(tmp_path: Path) -> None:
    """Lightning fits the fused model (with validation) and its checkpoint loads into the plain
    class with the plain VSNs."""
    import lightning.pytorch as pl

    dataset = synthetic_dataset(FULL)
    validation = TimeSeriesDataSet.from_dataset(dataset, synthetic_frame(), predict=True)
    fused = fused_copy(synthetic_model(dataset, dropout=0.1))
    trainer = pl.Trainer(
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=1,
        val_check_interval=2,
        gradient_clip_val=0.1,
    )
    trainer.fit(
        fused,
        train_dataloaders=dataset.to_dataloader(train=True, batch_size=32),
        val_dataloaders=validation.to_dataloader(train=False, batch_size=32),
    )
    assert n_fused(fused) == 3
    path = tmp_path / "fused.ckpt"
    trainer.save_checkpoint(path)
    plain = TemporalFusionTransformer.load_from_checkpoint(path)
    assert type(plain.encoder_variable_selection) is VariableSelectionNetwork
    assert_same_outputs(plain, fused, take_batches(dataset, 1, batch_size=32)[0])


def test_deepcopy_pickle_and_torch_save() -> None:
    dataset = synthetic_dataset(FULL)
    model = synthetic_model(dataset)
    fused = fused_copy(model)
    batch = take_batches(dataset, 1, batch_size=32)[0]
    buffer = io.BytesIO()
    torch.save(fused, buffer)
    buffer.seek(0)
    copies = [
        copy.deepcopy(fused),
        pickle.loads(pickle.dumps(fused)),
        torch.load(buffer, weights_only=False),
    ]
    for other in copies:
        assert n_fused(other) == 3
        assert_same_outputs(fused, other, batch, exact=True)
        assert_same_outputs(model, other, batch)


def test_parameters_unchanged_and_ddp() -> None:
    """Fusing keeps the very same parameter objects; DDP without find_unused_parameters runs."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dataset = synthetic_dataset(FULL)
    model = synthetic_model(dataset)
    before = list(model.named_parameters())
    fuse_variable_selection(model)
    after = list(model.named_parameters())
    assert [(n, id(p)) for n, p in before] == [(n, id(p)) for n, p in after]
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or already initialised")
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(model, find_unused_parameters=False)
        for batch in take_batches(dataset, 3, batch_size=32):  # an unused one fails step 2
            x, y = batch
            loss = model.loss(ddp(x)["prediction"], y)
            loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    finally:
        dist.destroy_process_group()
