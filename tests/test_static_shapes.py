"""static_step: the training step at fixed shapes computes the library's step.

On real Stallion batches (encoder lengths 12-24, decoder lengths 1-6), padded to the dataset's
lengths: the loss, the predictions at valid steps, the interpretation outputs over the library's
steps and every gradient, in float64 to 1e-9 and in float32 as close to float64 as the library's
own. Then the pieces (the masked LSTM, windows without encoder steps), that the step is one graph
without host reads (torch.compile fullgraph, no recompilation across lengths), and the lever in a
Lightning fit.
"""

from __future__ import annotations

import copy
import functools
import types
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from pytorch_forecasting import TemporalFusionTransformer, TimeSeriesDataSet
from pytorch_forecasting.models.nn import LSTM
from pytorch_forecasting.utils import create_mask
from test_variable_selection import (
    _quiet_single_thread,  # noqa: F401  (autouse fixture)
    assert_rounding,
    assert_tight,
    fused_copy,
    stallion,  # noqa: F401  (fixture)
    stallion_model,
    to_dtype,
)

from tft_sagemaker.config import SpeedupConfig
from tft_sagemaker.speedups import Outcome, engage, static_shapes
from tft_sagemaker.speedups.static_shapes import (
    StaticShapeHooks,
    _probe_dataset,
    choose_compile_mode,
    encoder_state,
    library_loss,
    lstm_weights,
    masked_lstm,
    pad_batch,
    static_shapes_guard,
    static_step,
    step_weights,
    unsupported_model,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def stallion_batches(dataset: TimeSeriesDataSet) -> list[Any]:
    """A shuffled training batch, and one of windows with short encoders and decoders only
    (the library pads it to 20 and 5 steps; the static step to 24 and 6)."""
    index = dataset.index
    decoder = dataset.calculate_decoder_length(
        dataset.data["time"][index["index_end"].to_numpy()].numpy(),
        index["sequence_length"].to_numpy(),
    )
    encoder = index["sequence_length"].to_numpy() - decoder
    short = np.flatnonzero((encoder <= 20) & (decoder <= 5))
    torch.manual_seed(0)
    shuffled = next(iter(dataset.to_dataloader(train=True, batch_size=64, num_workers=0)))
    rng = np.random.default_rng(0)
    windows = rng.choice(short, 64, replace=False)
    return [shuffled, TimeSeriesDataSet._collate_fn([dataset[int(i)] for i in windows])]


def both_steps(model: TemporalFusionTransformer, batch: Any, lengths: tuple[int, int]) -> dict:
    """Train mode: the library's and the static step's loss, outputs and gradients."""
    x, y = batch
    model.train()
    parameters = dict(model.named_parameters())
    out = model(x)
    loss = library_loss(model, out["prediction"], y, x["decoder_lengths"])
    grads = torch.autograd.grad(loss, list(parameters.values()))
    static_loss, static_out = static_step(model, *pad_batch(x, y, *lengths), step_weights(model))
    static_grads = torch.autograd.grad(static_loss, list(parameters.values()))
    return {
        "library": (loss.detach(), out, dict(zip(parameters, grads, strict=True))),
        "static": (
            static_loss.detach(),
            static_out,
            dict(zip(parameters, static_grads, strict=True)),
        ),
    }


def valid_prediction(prediction: torch.Tensor, x: dict[str, Any]) -> torch.Tensor:
    steps = x["decoder_lengths"].max()
    return prediction[:, :steps][create_mask(int(steps), x["decoder_lengths"], inverse=True)]


def check_static_step(
    model: TemporalFusionTransformer, batches: list[Any], lengths: tuple[int, int]
) -> None:
    model64 = copy.deepcopy(model).double()
    for batch in batches:
        check_batch(model, model64, batch, lengths)


def check_batch(
    model: TemporalFusionTransformer,
    model64: TemporalFusionTransformer,
    batch: Any,
    lengths: tuple[int, int],
) -> None:
    x = batch[0]
    reference = both_steps(model64, to_dtype(batch, torch.float64), lengths)
    single = both_steps(model, batch, lengths)
    ref_loss, ref_out, ref_grads = reference["library"]
    loss64, out64, grads64 = reference["static"]
    assert_tight(loss64, ref_loss)
    assert_tight(
        valid_prediction(out64["prediction"], x), valid_prediction(ref_out["prediction"], x)
    )
    encoder, decoder = (int(x[f"{part}_lengths"].max()) for part in ("encoder", "decoder"))
    library_steps = {  # the static outputs over the library's (maybe shorter) steps
        "encoder_attention": (slice(None), slice(decoder), slice(None), slice(encoder)),
        "decoder_attention": (slice(None), slice(decoder), slice(None), slice(decoder)),
        "encoder_variables": (slice(None), slice(encoder)),
    }
    for key, steps in library_steps.items():
        assert_tight(out64[key][steps], ref_out[key])
    scale = max(g.abs().max().item() for g in ref_grads.values())
    for name, grad in ref_grads.items():
        assert_tight(grads64[name], grad, scale)

    library_loss32, library_out32, library_grads32 = single["library"]
    loss32, out32, grads32 = single["static"]
    assert_rounding("loss", loss32, library_loss32, ref_loss)
    assert_rounding(
        "prediction",
        valid_prediction(out32["prediction"], x),
        valid_prediction(library_out32["prediction"], x),
        valid_prediction(ref_out["prediction"], x),
    )
    for name, grad in ref_grads.items():
        assert_rounding(name, grads32[name], library_grads32[name], grad, scale)


@pytest.fixture(scope="module")
def batches(stallion: TimeSeriesDataSet) -> list[Any]:  # noqa: F811
    return stallion_batches(stallion)


def test_stallion_static_step(stallion: TimeSeriesDataSet, batches: list[Any]) -> None:  # noqa: F811
    lengths = (stallion.max_encoder_length, stallion.max_prediction_length)
    shuffled, short = batches
    assert int(shuffled[0]["encoder_lengths"].min()) < stallion.max_encoder_length
    assert shuffled[0]["decoder_lengths"].unique().numel() > 1
    assert short[0]["encoder_cont"].size(1) <= 20 and short[0]["decoder_cont"].size(1) <= 5
    model = stallion_model(stallion)
    assert unsupported_model(model) is None
    check_static_step(model, batches, lengths)


def test_stallion_static_step_fused(stallion: TimeSeriesDataSet, batches: list[Any]) -> None:  # noqa: F811
    """With the job's CPU levers (fused variable selection) in place as well."""
    model = fused_copy(stallion_model(stallion))
    check_static_step(
        model, batches[1:], (stallion.max_encoder_length, stallion.max_prediction_length)
    )


@pytest.mark.parametrize("layers", [1, 2])
def test_masked_lstm_is_the_packed_lstm(layers: int) -> None:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    lstm = LSTM(3, 5, num_layers=layers, batch_first=True).double()
    lengths = torch.tensor([7, 1, 4, 7, 2])
    x = torch.randn(5, 7, 3, generator=generator, dtype=torch.float64)
    state = tuple(torch.randn(layers, 5, 5, generator=generator, dtype=torch.float64) for _ in "hc")
    expected, (hidden, cell) = lstm(x, state, lengths=lengths, enforce_sorted=False)
    valid = create_mask(7, lengths, inverse=True)
    output, (masked_hidden, masked_cell) = masked_lstm(lstm_weights(lstm), x, state, valid, False)
    assert_tight(output, expected)
    assert_tight(masked_hidden, hidden)
    assert_tight(masked_cell, cell)


def test_windows_without_encoder_steps() -> None:
    """The state handed to the decoder is the library's, whose cell takes initial hidden
    states (its handle_no_encoding), and zeros when no window has an encoder step."""
    torch.manual_seed(0)
    lstm = LSTM(3, 4, num_layers=1, batch_first=True).double()
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    state = tuple(torch.randn(1, 4, 4, dtype=torch.float64) for _ in "hc")
    for lengths in (torch.tensor([5, 0, 3, 0]), torch.tensor([0, 0, 0, 0])):
        expected = lstm(x, state, lengths=lengths, enforce_sorted=False)[1]
        valid = create_mask(5, lengths, inverse=True)
        final = masked_lstm(lstm_weights(lstm), x, state, valid, False)[1]
        actual = encoder_state(final, state, lengths)
        for a, e in zip(actual, expected, strict=True):
            assert_tight(a, e)


def test_pad_batch_is_the_collate_of_longer_windows() -> None:
    """Padding a batch of short windows gives what _collate_fn gives them beside a long one."""
    dataset = _probe_dataset()
    lengths = dataset.index["sequence_length"].to_numpy()
    short, long = np.flatnonzero(lengths < lengths.max())[:5], int(np.argmax(lengths))
    together = TimeSeriesDataSet._collate_fn([dataset[int(i)] for i in [*short, long]])
    alone = TimeSeriesDataSet._collate_fn([dataset[int(i)] for i in short])
    x, y = pad_batch(*alone, dataset.max_encoder_length, dataset.max_prediction_length)
    for key, value in x.items():
        if torch.is_tensor(value):
            assert torch.equal(value, together[0][key][:-1]), key
    assert torch.equal(y[0], together[1][0][:-1]) and y[1] is None


def test_guard_passes() -> None:
    assert static_shapes_guard() is None


def test_compile_mode_choice() -> None:
    assert choose_compile_mode("auto", "cuda").value == "reduce-overhead"
    assert "not yet measured" in choose_compile_mode("auto", "cuda").reason
    assert choose_compile_mode("auto", "cpu").value == "eager"
    assert choose_compile_mode("max-autotune", "cuda").value == "max-autotune"


class StaticModel(StaticShapeHooks, TemporalFusionTransformer):
    """The library's TFT with the job model's static-shape hooks."""


def probe_model() -> StaticModel:
    torch.manual_seed(0)
    return StaticModel.from_dataset(
        _probe_dataset(),
        hidden_size=8,
        attention_head_size=2,
        hidden_continuous_size=4,
        dropout=0.0,
        learning_rate=0.01,
        log_interval=-1,
    )


def test_engage_on_gpus_only() -> None:
    model = probe_model()
    cpu = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    report = engage(SpeedupConfig(static_shapes=True), model, cpu)
    assert report.outcomes["static_shapes"] == Outcome("off", "cpu: the library's step")
    assert not model.static_shapes_on
    # engage reads the device from the trainer's strategy: a CUDA one, without a GPU here
    cuda = types.SimpleNamespace(strategy=types.SimpleNamespace(root_device=torch.device("cuda")))
    report = engage(SpeedupConfig(static_shapes=True), model, cuda)  # type: ignore[arg-type]
    outcome = report.outcomes["static_shapes"]
    assert outcome.state == "engaged" and outcome.note.startswith("compile_mode=reduce-overhead")
    assert model.static_shapes_on and model.compile_mode == "reduce-overhead"
    report = engage(SpeedupConfig(static_shapes=False), probe_model(), cuda)  # type: ignore[arg-type]
    assert report.outcomes["static_shapes"] == Outcome("off", "static_shapes=false")


def fitted(static: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[StaticModel, int]:
    """Three float64 training steps and a validation of the probe model (the static step
    eager when `static`): the model and how many steps went through static_step."""
    calls = []

    def counted(*args: Any) -> Any:  # the eager step: what the hooks call
        calls.append(1)
        return static_step(*args)

    monkeypatch.setattr(static_shapes, "static_step", counted)
    dataset = _probe_dataset()
    model = probe_model()
    model.static_shapes_on, model.compile_mode = static, "eager"
    trainer = pl.Trainer(
        accelerator="cpu",
        precision="64-true",
        max_steps=3,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    torch.manual_seed(0)
    trainer.fit(
        model,
        dataset.to_dataloader(train=True, batch_size=8, num_workers=0),
        dataset.to_dataloader(train=False, batch_size=8, num_workers=0),
    )
    return model, len(calls)


def test_lightning_training_is_the_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    library, library_calls = fitted(False, monkeypatch)
    static, static_calls = fitted(True, monkeypatch)
    assert (library_calls, static_calls) == (0, 3)  # training steps only, not validation
    for (name, p), (_, q) in zip(
        library.named_parameters(), static.named_parameters(), strict=True
    ):
        torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-8, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.slow
def test_one_graph_without_host_reads(
    stallion: TimeSeriesDataSet,  # noqa: F811
    batches: list[Any],
) -> None:
    """The static step (fused variable selection in place, as the job runs it) traces as one
    graph, forward and backward (aot_eager: torch.compile's tracing without a compiler, so
    this runs on CPUs): a host read (`.item()`, `int(lengths.max())`) or a data-dependent shape
    (packing) would break it. Batches of other lengths replay it without recompiling. The
    library's own step does not trace as one graph."""
    model = fused_copy(stallion_model(stallion)).train()
    lengths = (stallion.max_encoder_length, stallion.max_prediction_length)
    padded = [pad_batch(*batch, *lengths) for batch in batches]
    step = functools.partial(static_step, model)
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager", dynamic=False)
    first_loss, _ = compiled(*padded[0], step_weights(model))
    first_loss.backward()
    with torch.compiler.set_stance("fail_on_recompile"):
        loss, _ = compiled(*padded[1], step_weights(model))
        loss.backward()
    torch.testing.assert_close(loss, step(*padded[1], step_weights(model))[0], rtol=1e-6, atol=0)

    library = torch.compile(model, fullgraph=True, backend="eager")
    with pytest.raises(torch._dynamo.exc.Unsupported):
        library(batches[1][0])
    torch._dynamo.reset()
