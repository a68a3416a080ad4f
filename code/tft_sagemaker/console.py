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
