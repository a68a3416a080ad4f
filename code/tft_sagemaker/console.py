"""What the job prints: one log format for every rank, without notices that say nothing
actionable about this job."""

from __future__ import annotations

import logging
import os
import sys
import warnings

_SILENCED = (
    ".*is an instance of `nn.Module` and is already saved.*",
    ".*does not have many workers.*",
    ".*The number of training batches.*is smaller than the logging interval.*",
    ".*Checkpoint directory .* exists and is not empty.*",
    ".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
    # sklearn's, from pytorch-forecasting's per-window path (training with the library's
    # loader, evaluation, predict): its target-scale scalers, fitted on a named column, are
    # given bare numbers; once per window, 200,000 lines in one job's log.
    "X does not have valid feature names, but StandardScaler was fitted with feature names",
)


def setup_logging(rank: int | None = None) -> None:
    """Log to stdout (what SageMaker ships to CloudWatch), each line tagged with the global
    rank; before the launch plan is known, with what the launcher's variables say."""
    if rank is None:
        rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s",
        stream=sys.stdout,
        force=True,
    )
    for pattern in _SILENCED:
        warnings.filterwarnings("ignore", message=pattern)
