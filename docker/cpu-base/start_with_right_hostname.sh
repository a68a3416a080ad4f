#!/bin/bash
# Stand-in for the AWS DLC's entrypoint script of the same name, with the same dispatch:
# `train` starts the SageMaker training toolkit, anything else is evaluated as a command line.
# The DLC also LD_PRELOADs a gethostname() shim built at start (with gcc) that returns the
# resourceconfig's current_host; here the container's hostname is set by `docker run --hostname`
# or compose's `hostname:`, which is what SageMaker local mode does too.
if [[ "$1" = "train" ]]; then
    train
else
    # As in the DLC: one string holding a whole command line (`docker run IMAGE "a && b"`) works.
    # shellcheck disable=SC2294
    eval "$@"
fi
