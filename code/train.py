"""SageMaker entry point (SAGEMAKER_PROGRAM): trains a Temporal Fusion Transformer.

The toolkit runs `python train.py --key value ...` with the job's hyperparameters; everything
else lives in the tft_sagemaker package beside this file. `python train.py --help` lists the
hyperparameters.
"""

import sys

from tft_sagemaker.job import main

if __name__ == "__main__":
    sys.exit(main())
