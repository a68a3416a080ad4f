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
So are the two decisions beside it that depend on the machine, each with a thin reader of the
machine for the job: how many CPUs a process gets (`usable_cpus`: affinity, cgroup CPU quota,
training containers sharing the machine) and which network interface the process group uses
(`choose_interface`: the resource config's name if it exists here, else the route to the master).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import struct
import time
from collections.abc import Collection, Mapping, Sequence
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
    # Set only when an external launcher (torchrun, mpirun) started this process.
    global_rank: int | None = None
    local_rank: int | None = None

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.devices

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_leader_host(self) -> bool:
        return self.node_rank == 0

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "world_size": self.world_size}

    def lightning_env(self) -> dict[str, str]:
        """Variables Lightning's environment reads; with them set, its ``ddp`` strategy starts
        the per-device processes of this node itself (``lightning``) or joins the processes an
        external launcher started (``mpi``; torchrun sets its own)."""
        if self.launcher not in ("lightning", "mpi"):
            return {}
        env = {
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
            "NODE_RANK": str(self.node_rank),
        }
        if self.launcher == "mpi":
            assert self.global_rank is not None and self.local_rank is not None
            env |= {
                "LOCAL_RANK": str(self.local_rank),
                "RANK": str(self.global_rank),
                "WORLD_SIZE": str(self.world_size),
            }
        return env


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
    common = {"accelerator": "gpu" if use_gpu else "cpu", "backend": backend}

    if "TORCHELASTIC_RUN_ID" in env or ("LOCAL_WORLD_SIZE" in env and "GROUP_RANK" in env):
        world, local_size = _int(env, "WORLD_SIZE"), _int(env, "LOCAL_WORLD_SIZE")
        if world % local_size:
            raise JobError(f"torchrun WORLD_SIZE={world} is not a multiple of {local_size}.")
        plan = LaunchPlan(
            launcher="torchrun",
            hosts=tuple(hosts),
            current_host=current,
            node_rank=_int(env, "GROUP_RANK"),
            num_nodes=world // local_size,
            devices=local_size,
            master_addr=env.get("MASTER_ADDR", hosts[0]),
            master_port=int(env.get("MASTER_PORT", master_port)),
            threads_per_process=max(1, cpus_per_host // local_size),
            global_rank=_int(env, "RANK"),
            local_rank=_int(env, "LOCAL_RANK"),
            **common,
        )
    elif "OMPI_COMM_WORLD_SIZE" in env:
        world = _int(env, "OMPI_COMM_WORLD_SIZE")
        local_size = _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE")
        rank = _int(env, "OMPI_COMM_WORLD_RANK")
        if world % local_size:
            raise JobError(f"mpirun world size {world} is not a multiple of {local_size}.")
        plan = LaunchPlan(
            launcher="mpi",
            hosts=tuple(hosts),
            current_host=current,
            node_rank=rank // local_size,
            num_nodes=world // local_size,
            devices=local_size,
            master_addr=hosts[0],
            master_port=master_port,
            threads_per_process=max(1, cpus_per_host // local_size),
            global_rank=rank,
            local_rank=_int(env, "OMPI_COMM_WORLD_LOCAL_RANK"),
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


def process_cpus() -> int:
    """`usable_cpus` of this process."""
    return usable_cpus(os.sched_getaffinity(0), read_cpu_max(), os.cpu_count() or 1)


@dataclass(frozen=True)
class InterfaceChoice:
    name: str | None  # for GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME; None: leave them unset
    reason: str


def choose_interface(
    configured: str | None, existing: Sequence[str], route: str | None
) -> InterfaceChoice:
    """The network interface for the process group: the resource config's
    `network_interface_name` when this container has it, else the interface of the route to
    the master, else none (gloo and NCCL then pick one themselves).

    SageMaker names an interface that exists; SDK v3 local mode writes "ethwe" while its
    containers only have eth0, and gloo fails on a name that does not exist.
    """
    if configured and configured in existing:
        return InterfaceChoice(configured, "the resource config's network_interface_name")
    missing = (
        f"the resource config's network_interface_name {configured!r} does not exist here "
        f"(interfaces: {', '.join(existing) or 'none'})"
        if configured
        else "the resource config names no interface"
    )
    if route and route in existing:
        return InterfaceChoice(route, f"{missing}: using the interface of the route to the master")
    return InterfaceChoice(None, f"{missing}, and no route to the master was found: left unset")


def route_interface(route_table: str, address: str) -> str | None:
    """The interface of the most specific IPv4 route to `address`, from the text of
    /proc/net/route (addresses in host byte order, as hexadecimal); None if none matches."""
    try:
        target = struct.unpack("=I", socket.inet_aton(address))[0]
    except OSError:
        return None  # not an IPv4 address
    best: tuple[int, int, str] | None = None  # (-prefix length, metric, interface)
    for line in route_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8 or not int(fields[3], 16) & 1:  # RTF_UP
            continue
        destination, mask = int(fields[1], 16), int(fields[7], 16)
        if target & mask == destination:
            candidate = (-bin(mask).count("1"), int(fields[6]), fields[0])
            best = min(best, candidate) if best else candidate
    return best[2] if best else None


def network_interface(configured: str | None, master_addr: str) -> InterfaceChoice:
    """`choose_interface` for this container: its interfaces and its route to the master."""
    existing = [name for _, name in socket.if_nameindex()]
    try:
        table, address = Path("/proc/net/route").read_text(), socket.gethostbyname(master_addr)
    except OSError:  # no routing table to read, or the master does not resolve: no route known
        return choose_interface(configured, existing, None)
    return choose_interface(configured, existing, route_interface(table, address))


def read_resource_config(config_dir: Path) -> dict[str, Any] | None:
    path = config_dir / "resourceconfig.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise JobError(f"{path} is not valid JSON: {err}") from None


def wait_for_hosts(hosts: tuple[str, ...], timeout_s: float, interval_s: float = 2.0) -> None:
    """Block until every host name resolves (bounded), so that rendezvous never waits on DNS."""
    deadline = time.monotonic() + timeout_s
    pending = list(hosts)
    while True:
        for host in list(pending):
            try:
                socket.gethostbyname(host)
                pending.remove(host)
            except OSError:
                pass
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise JobError(
                f"Host(s) {', '.join(pending)} did not resolve within {timeout_s:.0f} s "
                "(host_wait_timeout_s): the cluster cannot form."
            )
        time.sleep(interval_s)
