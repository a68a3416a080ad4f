"""Where the job reads and writes: the SageMaker `/opt/ml` layout, from the environment.

The toolkit exports `SM_*` variables; outside it (a plain `python train.py`) the same layout is
found under `SAGEMAKER_BASE_DIR` (default `/opt/ml`), as the toolkit itself does.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import JobError, writing

log = logging.getLogger(__name__)


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


@dataclass(frozen=True)
class JobPaths:
    base: Path
    model_dir: Path
    output_dir: Path
    output_data_dir: Path
    input_config_dir: Path
    channels: dict[str, Path]
    checkpoint_dir: Path
    tensorboard_dir: Path

    @property
    def failure_file(self) -> Path:
        return self.output_dir / "failure"

    def check_writable(self) -> None:
        """Write and remove a small file in every directory the job writes to, so that a
        read-only or full one fails the job before training rather than after it."""
        probe = f".write-probe-{socket.gethostname()}-{os.getpid()}"
        for what, directory in (
            ("the model directory", self.model_dir),
            ("the output directory", self.output_data_dir),
            ("the checkpoint directory", self.checkpoint_dir),
            ("the TensorBoard directory", self.tensorboard_dir),
        ):
            with writing(f"a test file in {what}", directory / probe):
                directory.mkdir(parents=True, exist_ok=True)
                (directory / probe).write_bytes(b"\0" * 4096)
                (directory / probe).unlink()

    def check_room(self, writes: Mapping[str, tuple[Path, int]]) -> None:
        """Fail now, naming the directory, if a filesystem the job writes to lacks the room for
        what it will write there: `writes` maps what is written to (directory, bytes at most).
        Directories on one filesystem share its free space."""
        by_filesystem: dict[int, list[tuple[str, Path, int]]] = {}
        for what, (directory, size) in writes.items():
            directory.mkdir(parents=True, exist_ok=True)
            by_filesystem.setdefault(directory.stat().st_dev, []).append((what, directory, size))
        for items in by_filesystem.values():
            needed = sum(size for _, _, size in items)
            stat = os.statvfs(items[0][1])
            free = stat.f_bavail * stat.f_frsize
            log.info(
                "room for %s: %s free, about %s needed",
                ", ".join(f"{what} in {d}" for what, d, _ in items),
                mib(free),
                mib(needed),
            )
            if free < needed:
                parts = ", ".join(f"{what} ~{mib(size)} in {d}" for what, d, size in items)
                raise JobError(
                    f"Not enough room to write {parts}: {mib(free)} free there, about "
                    f"{mib(needed)} needed. Free space or give the job a larger volume "
                    "(volume_size_in_gb); checkpoint_dir may point to another disk."
                )

    def with_checkpoint_dir(self, checkpoint_dir: str | None) -> JobPaths:
        """These paths with the configured checkpoint_dir (None: SageMaker's)."""
        if not checkpoint_dir:
            return self
        return dataclasses.replace(self, checkpoint_dir=Path(checkpoint_dir))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> JobPaths:
        env = os.environ if env is None else env
        base = Path(env.get("SAGEMAKER_BASE_DIR", "/opt/ml"))
        data_dir = base / "input" / "data"
        channels = {
            key[len("SM_CHANNEL_") :].lower(): Path(value)
            for key, value in env.items()
            if key.startswith("SM_CHANNEL_")
        }
        if not channels and data_dir.is_dir():
            channels = {p.name: p for p in sorted(data_dir.iterdir()) if p.is_dir()}
        output_dir = Path(env.get("SM_OUTPUT_DIR", base / "output"))
        # The checkpoint dir SageMaker syncs with S3 is /opt/ml/checkpoints; outside a container
        # it follows SAGEMAKER_BASE_DIR so that local runs never write to /opt/ml.
        return cls(
            base=base,
            model_dir=Path(env.get("SM_MODEL_DIR", base / "model")),
            output_dir=output_dir,
            output_data_dir=Path(env.get("SM_OUTPUT_DATA_DIR", output_dir / "data")),
            input_config_dir=Path(env.get("SM_INPUT_CONFIG_DIR", base / "input" / "config")),
            channels=channels,
            checkpoint_dir=base / "checkpoints",
            tensorboard_dir=output_dir / "tensorboard",
        )
