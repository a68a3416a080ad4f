"""The TFT's training step at fixed shapes, for GPUs: what a captured CUDA graph can replay.

pytorch-forecasting's step changes shape with the data and reads the device on the way:
`_collate_fn` pads each batch to its own longest encoder and decoder, the forward reads
`encoder_lengths.max()` (a host synchronisation) to slice encoder from decoder, the LSTMs
pack each batch (`pack_padded_sequence` takes its lengths on the CPU), `step` packs the target
when decoder lengths differ, and the loss asserts its value is finite. A GPU then waits for
Python at each of these points, and neither `torch.compile` nor a CUDA graph can cover them.

`static_step(model, x, y, step_weights(model))` computes the same loss and network output with
every shape fixed by the dataset (`max_encoder_length`, `max_prediction_length`): `pad_batch`
pads a batch to them with zeros (the library's own padding value), the encoder/decoder split is
the tensors' widths, both LSTMs run step by step, each window's state kept at its last valid
step (`masked_lstm`: padded outputs are 0, as `pad_packed_sequence` makes them; its weights come
in as arguments, since Dynamo does not trace an nn.LSTM module), the attention mask and the
loss's mask come from the lengths as tensors, and the loss is the metric's own per-element
`loss` reduced as `MultiHorizonMetric` reduces it. The mean of the
per-element losses is the library's to float rounding; predictions at valid steps likewise
(attention gives padded keys a weight of exactly 0). Windows without encoder steps get the
initial state as the library gives it (`encoder_state`). The step traces as one graph, forward
and backward, and replays for any lengths at a given batch size (tests/test_static_shapes.py).

`StaticShapeHooks` (mixed into the job's model class) runs training steps through it once
`engage` has switched it on (`static_shapes_on`), optionally compiled (`compile_mode`:
torch.compile's modes; `reduce-overhead` replays CUDA graphs). Validation, prediction and every
other step stay the library's. On CPUs the lever stays off: the CPU path and its results are the
library's (with the CPU levers). `static_shapes_guard` checks the versions this was tested with
and compares the step with the library's on a small library-built TFT in float64.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pytorch_forecasting import TemporalFusionTransformer, TimeSeriesDataSet
from pytorch_forecasting.metrics import (
    MASE,
    DistributionLoss,
    MultiHorizonMetric,
    MultiLoss,
    QuantileLoss,
)
from pytorch_forecasting.utils import create_mask, detach, unsqueeze_like
from torch import nn
from torch.nn.utils import rnn

from ..recipe import Choice
from .guards import guard

__all__ = [
    "COMPILE_MODES",
    "StaticShapeHooks",
    "choose_compile_mode",
    "encoder_state",
    "library_loss",
    "lstm_weights",
    "masked_lstm",
    "pad_batch",
    "static_network",
    "static_shapes_guard",
    "static_step",
    "step_weights",
    "unsupported_model",
]

log = logging.getLogger(__name__)

# compile_mode: "eager" runs the static step as it is; the others are torch.compile's modes
# ("reduce-overhead": inductor's kernels replayed as CUDA graphs).
COMPILE_MODES = ("eager", "default", "reduce-overhead", "max-autotune")

Tensors = torch.Tensor | list[torch.Tensor]
_TIME_KEYS = (
    "encoder_cat",
    "encoder_cont",
    "encoder_target",
    "decoder_cat",
    "decoder_cont",
    "decoder_target",
)


def _pad_time(value: Tensors, length: int) -> Tensors:
    """`value` (batch, time, ...) padded with zeros to `length` steps; lists element-wise."""
    if isinstance(value, list | tuple):
        return [_pad_time(v, length) for v in value]
    missing = length - value.size(1)
    if missing == 0:
        return value
    return torch.cat([value, value.new_zeros((value.size(0), missing, *value.shape[2:]))], dim=1)


def pad_batch(
    x: dict[str, Any], y: tuple[Tensors, torch.Tensor | None], encoder: int, decoder: int
) -> tuple[dict[str, Any], tuple[Tensors, torch.Tensor | None]]:
    """A batch as `_collate_fn` makes it, padded to `encoder` and `decoder` steps (what
    `_collate_fn` would give a batch holding a window of each length). Only shapes are read."""
    x = dict(x)
    for key in _TIME_KEYS:
        x[key] = _pad_time(x[key], encoder if key.startswith("encoder") else decoder)
    time_idx = x["decoder_time_idx"]  # _collate_fn counts on past each decoder's end
    steps = torch.arange(decoder, device=time_idx.device, dtype=time_idx.dtype)
    x["decoder_time_idx"] = time_idx[:, :1] + steps
    target, weight = y
    return x, (_pad_time(target, decoder), None if weight is None else _pad_time(weight, decoder))


# An LSTM's (weight_ih, weight_hh, bias_ih, bias_hh) per layer, and its dropout between layers:
# what `masked_lstm` runs. torch.compile does not trace through an nn.LSTM module (Dynamo
# refuses to wrap one), so the step takes them as arguments, read by `lstm_weights` outside.
LSTMWeights = tuple[tuple[tuple[torch.Tensor, ...], ...], float]


def lstm_weights(lstm: nn.LSTM) -> LSTMWeights:
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    layers = tuple(
        tuple(getattr(lstm, f"{name}_l{layer}") for name in names)
        for layer in range(lstm.num_layers)
    )
    return layers, float(lstm.dropout)


def step_weights(model: TemporalFusionTransformer) -> tuple[LSTMWeights, LSTMWeights]:
    """The encoder's and the decoder's LSTM weights, as `static_step` takes them."""
    return lstm_weights(model.lstm_encoder), lstm_weights(model.lstm_decoder)


def masked_lstm(
    weights: LSTMWeights,
    x: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor],
    valid: torch.Tensor,
    training: bool,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """A batch-first LSTM (`weights`) over `x` (batch, time, features) from `state`, where
    `valid` (batch, time) marks each window's steps (a prefix): the outputs, 0 at invalid steps,
    and each window's (hidden, cell) at its last valid step (the initial state without one)."""
    layers, dropout = weights
    hidden0, cell0 = state
    keep = valid.unsqueeze(-1)
    layer_input, hiddens, cells = x, [], []
    for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(layers):
        projected = F.linear(layer_input, w_ih, b_ih)  # every step's input at once
        hidden, cell = hidden0[layer], cell0[layer]
        outputs = []
        for step in range(x.size(1)):
            gates = projected[:, step] + F.linear(hidden, w_hh, b_hh)
            i, f, g, o = gates.chunk(4, dim=1)
            new_cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
            new_hidden = torch.sigmoid(o) * torch.tanh(new_cell)
            cell = torch.where(keep[:, step], new_cell, cell)
            hidden = torch.where(keep[:, step], new_hidden, hidden)
            outputs.append(new_hidden)
        layer_input = torch.stack(outputs, dim=1) * keep
        if layer < len(layers) - 1:
            layer_input = F.dropout(layer_input, dropout, training)
        hiddens.append(hidden)
        cells.append(cell)
    return layer_input, (torch.stack(hiddens), torch.stack(cells))


def encoder_state(
    state: tuple[torch.Tensor, torch.Tensor],
    initial: tuple[torch.Tensor, torch.Tensor],
    lengths: torch.Tensor,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The state pytorch-forecasting's LSTM hands on when windows have no encoder step: what its
    `LSTM.handle_no_encoding` computes (the initial hidden states scattered into hidden and cell
    alike; written out, as Dynamo cannot trace the module's method), and zeros for a batch
    without any encoder step (its `max_length == 0` branch). tests/test_static_shapes.py
    compares it with the library's LSTM."""
    no_encoding = (lengths == 0)[None, :, None]
    hidden = state[0].masked_scatter(no_encoding, initial[0])
    cell = state[1].masked_scatter(no_encoding, initial[0])
    empty = (lengths == 0).all()
    return torch.where(empty, 0.0, hidden), torch.where(empty, 0.0, cell)


def _attention_mask(
    model: TemporalFusionTransformer,
    encoder_lengths: torch.Tensor,
    decoder_lengths: torch.Tensor,
    encoder: int,
    decoder: int,
) -> torch.Tensor:
    """`get_attention_mask` with the sizes taken from the tensors instead of `lengths.max()`."""
    if model.hparams.causal_attention:
        attend = torch.arange(decoder, device=encoder_lengths.device)
        decoder_mask = (attend >= attend[:, None]).unsqueeze(0).expand(len(encoder_lengths), -1, -1)
    else:
        decoder_mask = create_mask(decoder, decoder_lengths).unsqueeze(1).expand(-1, decoder, -1)
    encoder_mask = create_mask(encoder, encoder_lengths).unsqueeze(1).expand(-1, decoder, -1)
    return torch.cat((encoder_mask, decoder_mask), dim=2)


def static_network(
    model: TemporalFusionTransformer,
    x: dict[str, Any],
    lstms: tuple[LSTMWeights, LSTMWeights],
) -> dict[str, Any]:
    """`TemporalFusionTransformer.forward`'s results (before `to_network_output`), its mathematics
    step by step, with the encoder and decoder widths those of the (padded) tensors; `lstms`:
    `step_weights(model)`."""
    encoder_lengths, decoder_lengths = x["encoder_lengths"], x["decoder_lengths"]
    encoder, decoder = x["encoder_cont"].size(1), x["decoder_cont"].size(1)
    timesteps = encoder + decoder
    x_cat = torch.cat([x["encoder_cat"], x["decoder_cat"]], dim=1)
    x_cont = torch.cat([x["encoder_cont"], x["decoder_cont"]], dim=1)
    input_vectors = model.input_embeddings(x_cat)
    input_vectors.update(
        {
            name: x_cont[..., idx].unsqueeze(-1)
            for idx, name in enumerate(model.hparams.x_reals)
            if name in model.reals
        }
    )
    if len(model.static_variables) > 0:
        static_embedding, static_variable_selection = model.static_variable_selection(
            {name: input_vectors[name][:, 0] for name in model.static_variables}
        )
    else:
        static_embedding = x_cont.new_zeros((x_cont.size(0), model.hparams.hidden_size))
        static_variable_selection = x_cont.new_zeros((x_cont.size(0), 0))
    static_context = model.expand_static_context(
        model.static_context_variable_selection(static_embedding), timesteps
    )
    embeddings_encoder, encoder_sparse_weights = model.encoder_variable_selection(
        {name: input_vectors[name][:, :encoder] for name in model.encoder_variables},
        static_context[:, :encoder],
    )
    embeddings_decoder, decoder_sparse_weights = model.decoder_variable_selection(
        {name: input_vectors[name][:, encoder:] for name in model.decoder_variables},
        static_context[:, encoder:],
    )

    layers = model.hparams.lstm_layers
    initial = (
        model.static_context_initial_hidden_lstm(static_embedding).expand(layers, -1, -1),
        model.static_context_initial_cell_lstm(static_embedding).expand(layers, -1, -1),
    )
    encoder_weights, decoder_weights = lstms
    encoder_valid = create_mask(encoder, encoder_lengths, inverse=True)
    encoder_output, state = masked_lstm(
        encoder_weights, embeddings_encoder, initial, encoder_valid, model.training
    )
    state = encoder_state(state, initial, encoder_lengths)
    # The decoder's final state is not used: its outputs at valid steps are all that matter.
    decoder_valid = create_mask(decoder, decoder_lengths, inverse=True)
    decoder_output, _ = masked_lstm(
        decoder_weights, embeddings_decoder, state, decoder_valid, model.training
    )

    lstm_output_encoder = model.post_lstm_add_norm_encoder(
        model.post_lstm_gate_encoder(encoder_output), embeddings_encoder
    )
    lstm_output_decoder = model.post_lstm_add_norm_decoder(
        model.post_lstm_gate_decoder(decoder_output), embeddings_decoder
    )
    lstm_output = torch.cat([lstm_output_encoder, lstm_output_decoder], dim=1)
    static_context_enrichment = model.static_context_enrichment(static_embedding)
    attn_input = model.static_enrichment(
        lstm_output, model.expand_static_context(static_context_enrichment, timesteps)
    )
    attn_output, attn_output_weights = model.multihead_attn(
        q=attn_input[:, encoder:],
        k=attn_input,
        v=attn_input,
        mask=_attention_mask(model, encoder_lengths, decoder_lengths, encoder, decoder),
    )
    attn_output = model.post_attn_gate_norm(attn_output, attn_input[:, encoder:])
    output = model.pos_wise_ff(attn_output)
    output = model.pre_output_gate_norm(output, lstm_output[:, encoder:])
    if model.n_targets > 1:
        output = [output_layer(output) for output_layer in model.output_layer]
    else:
        output = model.output_layer(output)
    return dict(
        prediction=model.transform_output(output, target_scale=x["target_scale"]),
        encoder_attention=attn_output_weights[..., :encoder],
        decoder_attention=attn_output_weights[..., encoder:],
        static_variables=static_variable_selection,
        encoder_variables=encoder_sparse_weights,
        decoder_variables=decoder_sparse_weights,
        decoder_lengths=decoder_lengths,
        encoder_lengths=encoder_lengths,
    )


def static_loss(
    metric: MultiHorizonMetric,
    prediction: torch.Tensor,
    y: tuple[torch.Tensor, torch.Tensor | None],
    lengths: torch.Tensor,
) -> torch.Tensor:
    """What `metric(prediction, y)` returns for one batch (y packed by `lengths`, as `step`
    packs it), without reading the device: a non-finite sum becomes 1e9 as there, unlogged."""
    target, weight = y
    losses = metric.loss(prediction, target)
    if weight is not None:
        losses = losses * unsqueeze_like(weight, losses)
    total = metric.mask_losses(losses, lengths).sum()
    total = torch.where(torch.isfinite(total), total, torch.full_like(total, 1e9))
    loss = total / lengths.sum()
    return loss.sqrt() if metric.reduction == "sqrt-mean" else loss


def library_loss(
    model: TemporalFusionTransformer,
    prediction: torch.Tensor,
    y: tuple[torch.Tensor, torch.Tensor | None],
    lengths: torch.Tensor,
) -> torch.Tensor:
    """The training loss as the library's `step` computes it: the target packed by `lengths`
    (when they differ), then the loss metric."""
    target, weight = y
    if (lengths < lengths.max()).any():
        target = rnn.pack_padded_sequence(
            target, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
    return model.loss(prediction, (target, weight))


def static_step(
    model: TemporalFusionTransformer,
    x: dict[str, Any],
    y: tuple[Any, Any],
    lstms: tuple[LSTMWeights, LSTMWeights],
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The training loss and the network's results of a batch padded by `pad_batch`; `lstms`:
    `step_weights(model)` (read outside a compiled step)."""
    out = static_network(model, x, lstms)
    return static_loss(model.loss, out["prediction"], y, x["decoder_lengths"]), out


def choose_compile_mode(setting: str, device: str) -> Choice:
    """How the static step runs: `setting` unless auto. Auto on CUDA: reduce-overhead, which
    replays the step's kernels as CUDA graphs; the library's step there was launch-bound."""
    if setting != "auto":
        return Choice("compile_mode", setting, "as configured")
    if device != "cuda":
        return Choice("compile_mode", "eager", f"{device}: no CUDA graphs")
    return Choice(
        "compile_mode",
        "reduce-overhead",
        "auto on CUDA: the library's step was launch-bound on an H200 (about 1,900 kernels a "
        "step, GPU 20% busy), which CUDA graphs remove; the modes are not yet measured against "
        "each other (bench/gpu_check.sh)",
    )


def unsupported_model(model: nn.Module) -> str | None:
    """Why `static_step` does not reproduce this model's step, or None."""
    if not isinstance(model, TemporalFusionTransformer):
        return f"{type(model).__name__} is not a TemporalFusionTransformer"
    if type(model).forward is not TemporalFusionTransformer.forward:
        return f"{type(model).__name__} overrides forward"
    loss = model.loss
    if not isinstance(loss, MultiHorizonMetric) or isinstance(
        loss, DistributionLoss | MultiLoss | MASE
    ):
        return f"loss {type(loss).__name__}"
    if loss.reduction not in ("mean", "sqrt-mean"):
        return f"loss reduction {loss.reduction}"
    if model.hparams.monotone_constraints:
        return "monotone constraints"
    for name in ("lstm_encoder", "lstm_decoder"):
        lstm = getattr(model, name)
        if not (
            isinstance(lstm, nn.LSTM)
            and lstm.batch_first
            and lstm.bias
            and not lstm.bidirectional
            and lstm.proj_size == 0
        ):
            return f"{name} is not a batch-first unidirectional LSTM with biases"
    return None


class StaticShapeHooks:
    """A LightningModule `step` that runs training batches through `static_step` once switched
    on (`static_shapes_on`, by `engage`), compiled by `compile_mode`; the library's otherwise."""

    static_shapes_on = False
    compile_mode = "eager"
    _static_step: Callable[..., tuple[torch.Tensor, dict[str, Any]]] | None = None

    def _compiled_step(self) -> Callable[..., tuple[torch.Tensor, dict[str, Any]]]:
        if self._static_step is None:
            step = functools.partial(static_step, self)
            if self.compile_mode != "eager":
                step = _compile_or_eager(step, self.compile_mode)
            self._static_step = step
        return self._static_step

    def step(self, x: dict[str, Any], y: Any, batch_idx: int, **kwargs: Any) -> Any:
        if not (self.static_shapes_on and self.training and not kwargs):  # type: ignore[attr-defined]
            return super().step(x, y, batch_idx, **kwargs)  # type: ignore[misc]
        lengths = self.dataset_parameters  # type: ignore[attr-defined]
        x, y = pad_batch(x, y, lengths["max_encoder_length"], lengths["max_prediction_length"])
        loss, out = self._compiled_step()(x, y, step_weights(self))
        self.log(  # type: ignore[attr-defined]
            f"{self.current_stage}_loss",  # type: ignore[attr-defined]
            detach(loss),
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(x["decoder_target"]),
        )
        return {"loss": loss, "n_samples": x["decoder_lengths"].size(0)}, (
            self.to_network_output(**out)  # type: ignore[attr-defined]
        )


def _compile_or_eager(step: Callable[..., Any], mode: str) -> Callable[..., Any]:
    """`step` compiled in `mode` (one graph); if its first call fails to compile, the eager step
    from then on, with the cause logged."""
    compiled = torch.compile(step, mode=mode, fullgraph=True)
    chosen: list[Callable[..., Any]] = []

    def run(*args: Any) -> Any:
        if chosen:
            return chosen[0](*args)
        try:
            result = compiled(*args)
        except Exception as err:  # a backend this torch cannot compile with here
            log.warning(
                "static_shapes: compile_mode=%s failed (%s: %s): eager",
                mode,
                type(err).__name__,
                str(err).splitlines()[0] if str(err) else "",
            )
            chosen.append(step)
            return step(*args)
        chosen.append(compiled)
        return result

    return run


# --------------------------------------------------------------------------------------------
# Guard: the static step against the library's, on a small library-built TFT in float64
# --------------------------------------------------------------------------------------------
def _probe_dataset() -> TimeSeriesDataSet:
    rng = np.random.default_rng(0)
    n_series, length = 4, 16
    frame = pd.DataFrame(
        {
            "series": np.repeat([f"s{i}" for i in range(n_series)], length),
            "t": np.tile(np.arange(length), n_series),
            "y": rng.uniform(1, 10, n_series * length),
            "promo": rng.choice(["no", "yes"], n_series * length),
        }
    ).astype({"series": "category", "promo": "category"})
    return TimeSeriesDataSet(
        frame,
        time_idx="t",
        target="y",
        group_ids=["series"],
        min_encoder_length=2,
        max_encoder_length=6,
        min_prediction_length=1,
        max_prediction_length=3,
        static_categoricals=["series"],
        time_varying_known_categoricals=["promo"],
        time_varying_known_reals=["t"],
        time_varying_unknown_reals=["y"],
        add_relative_time_idx=True,
        add_encoder_length=True,
    )


def _probe() -> str | None:
    """Short windows only (the padding the library would not add), float64, train mode without
    dropout: the library's loss, prediction and gradients, and the static step's, to 1e-9."""
    torch.manual_seed(0)  # (guards.probe restores torch's random state)
    dataset = _probe_dataset()
    model = TemporalFusionTransformer.from_dataset(
        dataset,
        hidden_size=8,
        attention_head_size=2,
        hidden_continuous_size=4,
        dropout=0.0,
        lstm_layers=2,
        loss=QuantileLoss(),
    ).double()
    if reason := unsupported_model(model):
        return reason
    lengths = dataset.index["sequence_length"].to_numpy()
    windows = np.flatnonzero(lengths < lengths.max())[:16]
    x, (target, _) = _double(TimeSeriesDataSet._collate_fn([dataset[int(i)] for i in windows]))
    y = (target, None)
    parameters = list(model.parameters())
    model.train()
    library = model(x)["prediction"]
    expected = library_loss(model, library, y, x["decoder_lengths"])
    expected_grads = torch.autograd.grad(expected, parameters)
    padded = pad_batch(x, y, dataset.max_encoder_length, dataset.max_prediction_length)
    actual, out = static_step(model, *padded, step_weights(model))
    grads = torch.autograd.grad(actual, parameters)
    if not torch.allclose(actual, expected, rtol=1e-9, atol=0):
        return "static-shape loss differs from the library's"
    valid = create_mask(library.size(1), x["decoder_lengths"], inverse=True)
    if not torch.allclose(
        out["prediction"][:, : library.size(1)][valid], library[valid], rtol=1e-9, atol=1e-12
    ):
        return "static-shape predictions differ from the library's"
    scale = max(g.abs().max() for g in expected_grads)
    if not all(
        torch.allclose(g, e, rtol=1e-9, atol=1e-11 * scale)
        for g, e in zip(grads, expected_grads, strict=True)
    ):
        return "static-shape gradients differ from the library's"
    return None


def _double(value: Any) -> Any:
    """A batch with its floating-point tensors in float64."""
    if isinstance(value, torch.Tensor):
        return value.double() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _double(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_double(v) for v in value)
    return value


@functools.cache
def static_shapes_guard() -> str | None:
    return guard("torch", "pytorch-forecasting", check=_probe)
