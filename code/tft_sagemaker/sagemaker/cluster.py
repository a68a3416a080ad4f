"""The training cluster: how the processes of a launch plan form one process group.

- `SageMakerEnvironment`: Lightning's cluster environment for the job, built from the
  `LaunchPlan` and handed to the DDP strategy: rank, world size and master come from the one
  plan (`launch_plan.plan_launch`), whoever launched the processes.
- `configure_process`: what this process sets before the group forms: its threads, the network
  interface gloo and NCCL use (`choose_interface`), failing collectives at the timeout.
- `wait_for_hosts`: every host's name resolves before anyone meets at the master.
- `cluster_failures`: a collective that broke because the cluster never formed or a peer died
  becomes a cause naming the hosts, the master, the port and the interface.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import ClusterEnvironment

from ..errors import JobError
from .launch_plan import LaunchPlan

log = logging.getLogger(__name__)


class SageMakerEnvironment(ClusterEnvironment):
    """Lightning's view of the job's cluster, answered from its `LaunchPlan`.

    With an external launcher (torchrun, mpirun) every process exists already; otherwise
    (`lightning`: a generic Estimator runs the script once per host) Lightning's launcher
    starts the node's further processes, passing each its LOCAL_RANK, which `plan_launch`
    reads there. Never chosen by detection: the job hands it to the strategy.
    """

    def __init__(self, plan: LaunchPlan) -> None:
        self.plan = plan

    @property
    def creates_processes_externally(self) -> bool:
        # Whether this process exists already: started by torchrun or mpirun, or one of the
        # node's further processes that Lightning's launcher started (local rank > 0). The
        # node's first process under a generic Estimator is the one that starts them.
        return self.plan.external_launcher or self.plan.local_rank > 0

    @property
    def main_address(self) -> str:
        return self.plan.master_addr

    @property
    def main_port(self) -> int:
        return self.plan.master_port

    @staticmethod
    def detect() -> bool:
        return False

    def world_size(self) -> int:
        return self.plan.world_size

    def set_world_size(self, size: int) -> None:
        if size != self.plan.world_size:
            raise JobError(
                f"Lightning formed a world of {size} processes, the plan has "
                f"{self.plan.world_size} ({self.plan.num_nodes} node(s) x {self.plan.devices} "
                "device(s))."
            )

    def global_rank(self) -> int:
        return self.plan.global_rank

    def set_global_rank(self, rank: int) -> None:
        if rank != self.plan.global_rank:
            raise JobError(
                f"Lightning ranked this process {rank}, the plan {self.plan.global_rank}."
            )

    def local_rank(self) -> int:
        return self.plan.local_rank

    def node_rank(self) -> int:
        return self.plan.node_rank

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        if (num_devices, num_nodes) != (self.plan.devices, self.plan.num_nodes):
            raise JobError(
                f"The trainer has {num_nodes} node(s) x {num_devices} device(s), the plan "
                f"{self.plan.num_nodes} x {self.plan.devices}."
            )


def configure_process(plan: LaunchPlan) -> None:
    """What this process needs before the process group forms (after the hosts resolve: the
    interface follows the route to the master)."""
    # Several processes per host each taking every core is ~10x slower on CPUs.
    torch.set_num_threads(plan.threads_per_process)
    os.environ.setdefault("OMP_NUM_THREADS", str(plan.threads_per_process))
    # A dead peer then fails the collectives at the timeout instead of hanging forever.
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    if plan.num_nodes > 1:
        interface = network_interface(plan.network_interface_name, plan.master_addr)
        log.info("network interface: %s (%s)", interface.name or "unset", interface.reason)
        if interface.name:  # gloo and NCCL read them from the environment only
            os.environ.setdefault("NCCL_SOCKET_IFNAME", interface.name)
            os.environ.setdefault("GLOO_SOCKET_IFNAME", interface.name)
    if plan.backend == "smddp":
        try:
            import smdistributed.dataparallel.torch.torch_smddp  # noqa: F401  (registers smddp)
        except ImportError as err:
            raise JobError(
                "backend=smddp needs smdistributed-dataparallel (SageMaker PyTorch images up to "
                "2.3); use backend=nccl with torch_distributed on current images."
            ) from err


_PEER_LOST = ("closed by peer", "reset by peer", "broken pipe", "timed out", "timeout", "nccl")


@contextmanager
def cluster_failures(plan: LaunchPlan, timeout_s: int) -> Iterator[None]:
    """Turn a collective that broke because the cluster never formed, or because another
    process died, into a cause one can act on."""
    try:
        yield
    except (RuntimeError, dist.DistError) as err:
        if not plan.distributed:
            raise
        first_line = str(err).strip().splitlines()[0][:300]
        if not dist.is_initialized():  # the process group never formed
            raise JobError(_not_formed(plan, first_line)) from err
        if not any(marker in str(err).lower() for marker in _PEER_LOST):
            raise
        raise JobError(
            f"Lost a peer of the training group ({plan.world_size} processes on "
            f"{', '.join(plan.hosts)}): this host stopped within collective_timeout_s="
            f"{timeout_s}. The root cause is in the first failing host's log. ({first_line})"
        ) from err


def _not_formed(plan: LaunchPlan, cause: str) -> str:
    """What was tried, first: which host met which master, where, over which interface."""
    try:
        address = socket.gethostbyname(plan.master_addr)
    except OSError:
        address = "unresolved"
    variable = "NCCL_SOCKET_IFNAME" if plan.backend == "nccl" else "GLOO_SOCKET_IFNAME"
    interface = os.environ.get(variable)
    tried = f"{interface} ({variable})" if interface else f"chosen by {plan.backend}"
    return (
        f"The training cluster did not form: host {plan.current_host} (node {plan.node_rank} "
        f"of {plan.num_nodes}) tried master {plan.master_addr} at {address}:{plan.master_port} "
        f"over interface {tried}: {cause}"
    )


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
