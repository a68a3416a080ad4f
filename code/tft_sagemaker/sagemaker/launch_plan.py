"""SageMaker environment → launch plan: hosts, ranks, devices, master, backend.

How the processes of a job came to be decides who forms the process group:

- ``lightning``: a generic ``Estimator`` runs ``train`` once per host. This script is the node's
  first process; Lightning's DDP launcher starts one more per extra device, and the nodes meet
  at ``hosts[0]:master_port``.
- ``torchrun``: the PyTorch estimator's ``torch_distributed`` ran ``torchrun``, which already
  started one process per device on every host (TorchElastic variables).
- ``mpi``: ``pytorchddp`` / ``smdistributed`` ran ``mpirun`` (Open MPI variables).
- ``single``: one process, one device (or the CPU), nothing to form.

`plan_launch` is pure: it reads only the mappings it is given, so tests feed it environments.
So is the one decision beside it that depends on the machine, how many CPUs a process gets
(`usable_cpus`: affinity, cgroup CPU quota, training containers sharing the machine); the
readers of the machine (`process_cpus`, `read_cpu_max`, `read_resource_config`) are apart;
likewise the memory a container has (`host_memory`, pure; `process_memory` reads it).
How the planned processes then form a group is `cluster.py`'s.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, JobError

log = logging.getLogger(__name__)

DEFAULT_HOST = "algo-1"
# How many training containers (SageMaker hosts) a launcher put on this one machine: local
# compose and SageMaker local mode run every host of a job on the same machine, and each host
# must then size its threads to its share of the cores, not to all of them.
HOSTS_PER_MACHINE_VAR = "TFT_HOSTS_PER_MACHINE"


@dataclass(frozen=True)
class LaunchPlan:
    launcher: str  # single | lightning | torchrun | mpi
    hosts: tuple[str, ...]
    current_host: str
    node_rank: int
    num_nodes: int
    devices: int  # processes (= devices) per node
    accelerator: str  # gpu | cpu
    backend: str  # nccl | gloo | smddp
    master_addr: str
    master_port: int
    threads_per_process: int
    local_rank: int = 0  # this process on its node (Lightning's children get LOCAL_RANK)
    # The resource config's network_interface_name (cluster.choose_interface checks it).
    network_interface_name: str | None = None

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.devices

    @property
    def global_rank(self) -> int:
        return self.node_rank * self.devices + self.local_rank

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def external_launcher(self) -> bool:
        """Whether a launcher (torchrun, mpirun) started every process of the job; else
        Lightning starts this node's processes beyond the first."""
        return self.launcher in ("torchrun", "mpi")

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "world_size": self.world_size, "global_rank": self.global_rank}


def launched_by_launcher(env: Mapping[str, str]) -> bool:
    """Whether this process was started by a launcher (torchrun, mpirun, or Lightning for a
    node's further devices) rather than by SageMaker itself."""
    return any(k in env for k in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID", "OMPI_COMM_WORLD_RANK"))


def read_hosts(
    env: Mapping[str, str], resource_config: Mapping[str, Any] | None
) -> tuple[list[str], str]:
    """The job's hosts and this host, from SM_HOSTS/SM_CURRENT_HOST or resourceconfig.json."""
    if "SM_HOSTS" in env:
        # SM_HOSTS is a JSON *string*: len() of it counts characters, not hosts.
        hosts = json.loads(env["SM_HOSTS"])
        current = env.get("SM_CURRENT_HOST", hosts[0] if hosts else DEFAULT_HOST)
    elif resource_config:
        hosts = list(resource_config.get("hosts", []))
        current = resource_config.get("current_host", hosts[0] if hosts else DEFAULT_HOST)
    else:
        hosts, current = [DEFAULT_HOST], DEFAULT_HOST
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts) or not hosts:
        raise JobError(f"Cannot read the job's hosts from {hosts!r}.")
    # SageMaker numbers hosts algo-1, algo-2, ...: rank them in that order, not as listed.
    hosts = sorted(hosts, key=_host_sort_key)
    if current not in hosts:
        raise JobError(f"Current host {current!r} is not among the job's hosts {hosts}.")
    return hosts, current


def _host_sort_key(host: str) -> tuple[str, int, str]:
    prefix, _, number = host.rpartition("-")
    return (prefix, int(number), host) if number.isdigit() else (host, 0, host)


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except (KeyError, ValueError):
        raise JobError(
            f"Launcher variable {key}={env.get(key)!r} is missing or not an integer."
        ) from None


def plan_launch(
    env: Mapping[str, str],
    resource_config: Mapping[str, Any] | None,
    gpus_per_host: int,
    cpus_per_host: int,
    *,
    accelerator: str = "auto",
    devices: int | None = None,
    backend: str = "auto",
    master_port: int = 29500,
) -> LaunchPlan:
    """Decide the plan from the launcher's variables, the hosts and the devices of this host.

    `cpus_per_host` is what this container may use (`process_cpus`); when a launcher put
    several training containers on one machine (HOSTS_PER_MACHINE_VAR), each gets its share.
    """
    hosts, current = read_hosts(env, resource_config)
    cpus_per_host = max(1, cpus_per_host // hosts_per_machine(env))
    use_gpu = accelerator == "gpu" or (accelerator == "auto" and gpus_per_host > 0)
    if use_gpu and gpus_per_host == 0:
        raise ConfigError("accelerator=gpu but this host has no GPU.")
    if backend == "auto":
        backend = "nccl" if use_gpu else "gloo"
    if backend in ("nccl", "smddp") and not use_gpu:
        raise ConfigError(f"backend={backend} needs GPUs; use gloo (or auto) on CPU instances.")
    common = {
        "accelerator": "gpu" if use_gpu else "cpu",
        "backend": backend,
        "network_interface_name": (resource_config or {}).get("network_interface_name"),
    }

    torchrun = "TORCHELASTIC_RUN_ID" in env or ("LOCAL_WORLD_SIZE" in env and "GROUP_RANK" in env)
    if torchrun or "OMPI_COMM_WORLD_SIZE" in env:
        # torchrun's variables, or Open MPI's under the names torchrun would give them.
        names = (
            ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "LOCAL_RANK")
            if torchrun
            else tuple(f"OMPI_COMM_WORLD_{n}" for n in ("SIZE", "LOCAL_SIZE", "RANK", "LOCAL_RANK"))
        )
        world, local_size, rank, local_rank = (_int(env, name) for name in names)
        if world % local_size:
            raise JobError(
                f"{'torchrun' if torchrun else 'mpirun'} started {world} processes, not a "
                f"multiple of the {local_size} per node."
            )
        node_rank = _int(env, "GROUP_RANK") if torchrun else rank // local_size
        if rank != node_rank * local_size + local_rank:
            raise JobError(
                f"Launcher ranks disagree: global rank {rank} is not node {node_rank} x "
                f"{local_size} + local rank {local_rank}."
            )
        plan = LaunchPlan(
            launcher="torchrun" if torchrun else "mpi",
            hosts=tuple(hosts),
            current_host=current,
            node_rank=node_rank,
            num_nodes=world // local_size,
            devices=local_size,
            master_addr=env.get("MASTER_ADDR", hosts[0]) if torchrun else hosts[0],
            master_port=int(env.get("MASTER_PORT", master_port)) if torchrun else master_port,
            threads_per_process=max(1, cpus_per_host // local_size),
            local_rank=local_rank,
            **common,
        )
    else:
        if devices is None:
            devices = gpus_per_host if use_gpu else 1
        if use_gpu and devices > gpus_per_host:
            raise ConfigError(f"devices={devices} but this host has {gpus_per_host} GPU(s).")
        if not use_gpu and devices > cpus_per_host:
            raise ConfigError(
                f"devices={devices} CPU processes on a host with {cpus_per_host} CPU(s)."
            )
        distributed = len(hosts) * devices > 1
        plan = LaunchPlan(
            launcher="lightning" if distributed else "single",
            hosts=tuple(hosts),
            current_host=current,
            node_rank=hosts.index(current),
            num_nodes=len(hosts),
            devices=devices,
            # One host: loopback, so that no name has to resolve.
            master_addr=hosts[0] if len(hosts) > 1 else "127.0.0.1",
            master_port=master_port,
            threads_per_process=max(1, cpus_per_host // devices),
            local_rank=int(env.get("LOCAL_RANK", 0)),  # set by Lightning in its children
            **common,
        )
    if plan.num_nodes != len(hosts):
        raise JobError(
            f"The launcher started {plan.world_size} processes as {plan.num_nodes} node(s) of "
            f"{plan.devices}, but the job has {len(hosts)} host(s) ({', '.join(hosts)}): "
            "num_nodes x devices must equal WORLD_SIZE."
        )
    if backend == "smddp" and plan.launcher != "mpi":
        raise ConfigError(
            "backend=smddp needs the smdistributed launcher (distribution={'smdistributed': "
            "{'dataparallel': {'enabled': True}}}); use nccl with torch_distributed instead."
        )
    return plan


def usable_cpus(affinity: Collection[int] | None, cpu_max: str | None, cpu_count: int) -> int:
    """The CPUs a process can keep busy: those it may run on (affinity), capped by its cgroup's
    CPU quota (`cpu.max`: "QUOTA PERIOD" or "max PERIOD").

    A fractional quota rounds down (at least 1): one thread more than the quota lets the
    threads run ahead and then stand throttled for the rest of each period, and intra-op
    parallel regions wait at their barriers for the throttled thread.
    """
    cpus = len(affinity) if affinity else cpu_count
    quota, _, period = (cpu_max or "max").partition(" ")
    if quota != "max" and period:
        cpus = min(cpus, max(1, math.floor(int(quota) / int(period))))
    return max(1, cpus)


def hosts_per_machine(env: Mapping[str, str]) -> int:
    """How many training containers share this machine (HOSTS_PER_MACHINE_VAR; 1 if unset)."""
    value = env.get(HOSTS_PER_MACHINE_VAR, "1")
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{HOSTS_PER_MACHINE_VAR}={value!r}: give a whole number, 1 or more.")
    return int(value)


def read_cpu_max(cgroup: Path = Path("/sys/fs/cgroup")) -> str | None:
    """This container's CPU quota as cgroup v2 `cpu.max` text ("QUOTA PERIOD" or "max PERIOD"),
    from cgroup v2 or v1 (cpu.cfs_quota_us, -1 for none); None when neither is there.

    Read at the root of the mount, which is the container's own cgroup in a container; on a
    plain machine there is no quota there and the affinity decides.
    """
    try:
        return (cgroup / "cpu.max").read_text().strip()
    except OSError:
        pass
    for v1 in (cgroup / "cpu", cgroup / "cpu,cpuacct"):
        try:
            quota = int((v1 / "cpu.cfs_quota_us").read_text())
            period = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return f"{quota if quota > 0 else 'max'} {period}"
    return None


def host_memory(cgroup_limit: str | None, meminfo: str) -> tuple[int, str]:
    """Bytes this container may use, and where the figure comes from: its cgroup memory limit
    (v2 `memory.max` or v1 `memory.limit_in_bytes` text) where one is set below the machine's
    memory, else MemTotal of /proc/meminfo."""
    total = next(
        (
            int(line.split()[1]) * 1024
            for line in meminfo.splitlines()
            if line.startswith("MemTotal:")
        ),
        0,
    )
    limit = (cgroup_limit or "max").strip()
    if limit.isdigit() and (not total or int(limit) < total):
        return int(limit), "the container's cgroup memory limit"
    return total, "MemTotal of /proc/meminfo"


def read_memory_limit(cgroup: Path = Path("/sys/fs/cgroup")) -> str | None:
    """The container's cgroup memory limit as text (v2 `memory.max`, else v1's
    `memory.limit_in_bytes`); None when neither is there."""
    for path in (cgroup / "memory.max", cgroup / "memory" / "memory.limit_in_bytes"):
        try:
            return path.read_text().strip()
        except OSError:
            continue
    return None


def process_memory() -> tuple[int, str]:
    """`host_memory` of this container."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        meminfo = ""
    return host_memory(read_memory_limit(), meminfo)


def process_cpus() -> int:
    """`usable_cpus` of this process."""
    return usable_cpus(os.sched_getaffinity(0), read_cpu_max(), os.cpu_count() or 1)


def read_resource_config(config_dir: Path) -> dict[str, Any] | None:
    path = config_dir / "resourceconfig.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise JobError(f"{path} is not valid JSON: {err}") from None
