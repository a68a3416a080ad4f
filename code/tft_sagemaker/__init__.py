"""Temporal Fusion Transformer training for Amazon SageMaker (pytorch-forecasting + Lightning).

`job.py` is the flow, start to end; the README's "Layout" section is the map of the modules,
in the order the job runs them.
"""

import time

__version__ = "0.1.0"
STARTED = time.monotonic()  # when the job's code started (train.py imports this package first)
