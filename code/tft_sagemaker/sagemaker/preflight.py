"""What the training toolkit reads before the job's code runs, checked before it starts (by the
image's supervisor, and by local_test/train_local.sh before it edits hyperparameters.json). A
fault there ends otherwise in the toolkit's traceback (`Framework Error:`) or in an empty
`ExecuteUserScriptError`, with no cause in output/failure:

- input/config/*.json must each hold a JSON object (a trailing comma in a hand-edited
  hyperparameters.json is the common fault; on SageMaker the service writes these files, but
  local runs, compose and SDK local mode do not);
- the hyperparameters must fit in one argument: the toolkit runs the entry script as
  `/bin/sh -c "<the whole command line>"` and exports them again in SM_HPS, SM_USER_ARGS and
  SM_TRAINING_ENV, and Linux limits each single argument or environment string to
  MAX_ARG_STRLEN bytes (E2BIG, "Argument list too long", otherwise);
- the stop rehearsal variables (TFT_STOP_AT, stops.py) must parse.

    python -m tft_sagemaker.sagemaker.preflight    # SAGEMAKER_BASE_DIR as for the job

prints the cause, writes it to output/failure and exits 2, or exits 0.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping

from ..errors import ConfigError, JobError
from . import stops
from .failure import write_failure
from .paths import JobPaths

CONFIG_FILES = ("hyperparameters.json", "resourceconfig.json", "inputdataconfig.json")
MAX_ARG_STRLEN = 32 * 4096  # linux/binfmts.h: 32 pages
# SM_TRAINING_ENV holds the hyperparameters beside the rest of the environment (hosts, channels,
# paths, instance groups: a few KiB on a large cluster); this much of the limit is left for it.
ENVIRONMENT_ROOM = 16 * 1024
HYPERPARAMETER_BYTES = MAX_ARG_STRLEN - ENVIRONMENT_ROOM


def check_config_files(paths: JobPaths) -> dict[str, str]:
    """The JSON files under input/config, each an object; returns the hyperparameters."""
    hyperparameters: dict[str, str] = {}
    for name in CONFIG_FILES:
        path = paths.input_config_dir / name
        if not path.is_file():
            continue  # the toolkit's own defaults apply
        try:
            value = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(
                f"{path} is not valid JSON ({err}; a trailing comma?): fix the file, for example "
                f"with `python -m json.tool {name}`."
            ) from None
        if not isinstance(value, dict):
            raise ConfigError(
                f"{path} holds a JSON {type(value).__name__}, not an object of names and values."
            )
        if name == "hyperparameters.json":
            hyperparameters = value
    return hyperparameters


def check_hyperparameter_size(hyperparameters: Mapping[str, object]) -> None:
    """Refuse hyperparameters that the toolkit could not pass to the script. Measured as the
    toolkit's environment encodes them (JSON, non-ASCII escaped): a little more than its
    command line takes, never less."""
    size = len(json.dumps(hyperparameters, ensure_ascii=True, separators=(",", ":")))
    if size <= HYPERPARAMETER_BYTES:
        return
    longest = max(hyperparameters, key=lambda key: len(str(hyperparameters[key])))
    raise ConfigError(
        f"The hyperparameters take {size:,} bytes encoded (the longest, {longest}, "
        f"{len(str(hyperparameters[longest])):,} characters): the training toolkit passes them "
        f"to the script in one command line and one environment variable, which Linux limits "
        f"to {MAX_ARG_STRLEN:,} bytes each ({HYPERPARAMETER_BYTES:,} left for them). Put long "
        "values in a configuration file in the train channel (tft_config.json, or config_file)."
    )


def check(paths: JobPaths, env: Mapping[str, str]) -> None:
    """Every check above; a ConfigError names the first fault."""
    check_hyperparameter_size(check_config_files(paths))
    stops.Rehearsal.from_env(env)


def refused(paths: JobPaths, env: Mapping[str, str], who: str) -> int | None:
    """Run the checks; on a fault print the cause (prefixed with `who`), write it to
    output/failure and return the exit code (2, as the job's own input errors), else None."""
    try:
        check(paths, env)
    except JobError as err:
        print(f"{who}: {err}", file=sys.stderr, flush=True)
        paths.failure_file.unlink(missing_ok=True)  # an earlier local run's: this is the cause
        write_failure(paths.failure_file, err)
        return 2
    return None


def main() -> int:
    return refused(JobPaths.from_env(os.environ), os.environ, "preflight") or 0


if __name__ == "__main__":
    sys.exit(main())
