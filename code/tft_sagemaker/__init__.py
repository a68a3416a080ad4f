"""Temporal Fusion Transformer training for Amazon SageMaker (pytorch-forecasting + Lightning).

The job's flow, one module per step:
config (hyperparameters → JobConfig) → data (channels → validated frames) → dataset
(TimeSeriesDataSet) → model (TFT) → trainer (Lightning, callbacks) → artifacts (model dir).
Beside it: launch (SageMaker environment → distributed plan), loaders (sharded batches),
batches (vectorised batch assembly), evaluate (metrics), predict (forecasts from a model).
"""

__version__ = "0.1.0"
