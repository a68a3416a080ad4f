"""SageMaker entry point (SAGEMAKER_PROGRAM): trains a Temporal Fusion Transformer.

The toolkit runs `python train.py --key value ...` with the job's hyperparameters; everything
else lives in the tft_sagemaker package beside this file. `python train.py --help` lists the
hyperparameters.
"""

import gc
import sys

# The garbage collector's full passes walk every object alive, and torch, Lightning, pandas
# and pytorch-forecasting import hundreds of thousands that live as long as the process: seven
# passes over them while importing (about 0.8 s before the first step, in every process), and
# the interpreter's last ones at exit over everything the job built, only to free it anyway
# (about 1.5 s at 5 million rows; bench/scale.py). Frozen, they are left out of every pass;
# what the job makes and drops afterwards is collected as usual.
gc.disable()
from tft_sagemaker.job import main  # noqa: E402

gc.freeze()
gc.enable()

if __name__ == "__main__":
    code = main()
    gc.freeze()  # the process ends: nothing left to collect that exiting does not free
    sys.exit(code)
