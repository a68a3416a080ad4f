"""The training cluster: Lightning's view of the launch plan, the process group's network
interface, waiting for hosts, and the causes a cluster that breaks reports.

`SageMakerEnvironment` is tested the way Lightning tests its cluster environments
(tests/.../environments/test_torchelastic.py): from the environment a launcher leaves, every
property asserted.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from test_launch import hosts_env, mpi_env, torchrun_env

from tft_sagemaker.config import build_config
from tft_sagemaker.errors import JobError
from tft_sagemaker.presets import PRESET_VALUES
from tft_sagemaker.recipe import settle
from tft_sagemaker.sagemaker.cluster import (
    SageMakerEnvironment,
    choose_interface,
    cluster_failures,
    route_interface,
    wait_for_hosts,
)
from tft_sagemaker.sagemaker.failure import failure_text
from tft_sagemaker.sagemaker.launch_plan import plan_launch
from tft_sagemaker.sagemaker.paths import JobPaths
from tft_sagemaker.trainer import build_trainer


# --------------------------------------------------------------------------------------------
# SageMakerEnvironment: Lightning's cluster environment, from the plan
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "gpus", "expected"),
    [
        # A generic Estimator, host 2 of 2, the script's own process: Lightning starts 3 more.
        (hosts_env(2, 2), 4, ("algo-1", 29500, 8, 4, 0, 1, False)),
        # The process Lightning started on that host for its third GPU.
        (hosts_env(2, 2) | {"LOCAL_RANK": "2"}, 4, ("algo-1", 29500, 8, 6, 2, 1, True)),
        # torchrun (torch_distributed), worker 3 of node 1 of 2.
        (torchrun_env(2, 4, 1, 3), 4, ("algo-1", 7777, 8, 7, 3, 1, True)),
        # mpirun (pytorchddp), rank 5 = node 1, local 1.
        (mpi_env(2, 4, 1, 1), 4, ("algo-1", 29500, 8, 5, 1, 1, True)),
        # One CPU host, two processes: the master is loopback.
        (hosts_env(1), 0, ("127.0.0.1", 29500, 2, 0, 0, 0, False)),
    ],
)
def test_environment_answers_from_the_plan(env, gpus, expected) -> None:
    devices = None if gpus else 2
    plan = plan_launch(env, None, gpus_per_host=gpus, cpus_per_host=8, devices=devices)
    environment = SageMakerEnvironment(plan)
    assert (
        environment.main_address,
        environment.main_port,
        environment.world_size(),
        environment.global_rank(),
        environment.local_rank(),
        environment.node_rank(),
        environment.creates_processes_externally,
    ) == expected
    assert not SageMakerEnvironment.detect()  # handed to the strategy, never detected
    environment.validate_settings(num_devices=plan.devices, num_nodes=plan.num_nodes)
    environment.set_world_size(plan.world_size)  # what Lightning's DDP strategy sets: agreed
    environment.set_global_rank(plan.global_rank)


def test_environment_refuses_a_world_other_than_the_plan() -> None:
    environment = SageMakerEnvironment(plan_launch(hosts_env(2, 1), None, 4, 16))
    with pytest.raises(
        JobError, match=r"The trainer has 1 node\(s\) x 4 device\(s\), the plan 2 x 4"
    ):
        environment.validate_settings(num_devices=4, num_nodes=1)
    with pytest.raises(JobError, match="Lightning formed a world of 4 processes, the plan has 8"):
        environment.set_world_size(4)
    with pytest.raises(JobError, match="Lightning ranked this process 3, the plan 0"):
        environment.set_global_rank(3)


def test_the_job_s_trainer_uses_it(tmp_path) -> None:
    """The strategy the job builds for a distributed plan carries the plan's environment."""
    config = build_config({"preset": "synthetic", "accelerator": "cpu"}, None, PRESET_VALUES)
    plan = plan_launch(hosts_env(2, 2), None, gpus_per_host=0, cpus_per_host=2)
    paths = JobPaths.from_env({"SAGEMAKER_BASE_DIR": str(tmp_path)})
    trainer = build_trainer(settle(config, 1_000, plan.world_size), plan, paths, {})
    assert isinstance(trainer.strategy, DDPStrategy)
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SageMakerEnvironment) and environment.plan == plan
    assert (trainer.num_nodes, trainer.node_rank, trainer.world_size) == (2, 1, 2)


def test_wait_for_hosts_is_bounded() -> None:
    wait_for_hosts(("localhost", "127.0.0.1"), timeout_s=1)
    with pytest.raises(JobError, match="did not resolve within 0 s"):
        wait_for_hosts(("algo-1.invalid",), timeout_s=0, interval_s=0)


# --------------------------------------------------------------------------------------------
# The network interface of the process group
# --------------------------------------------------------------------------------------------
# /proc/net/route of a container on a compose network 172.18.0.0/16 with a second network
# 10.0.0.0/8 on eth1 (addresses are little-endian hexadecimal on x86).
ROUTES = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010012AC\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000012AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
eth1\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0
eth2\t0000000A\t00000000\t0000\t0\t0\t0\t0000FFFF\t0\t0\t0
"""


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("172.18.0.2", "eth0"),  # the compose network
        ("10.1.2.3", "eth1"),  # the second network; eth2's more specific route is down
        ("8.8.8.8", "eth0"),  # the default route
        ("algo-1", None),  # not an IPv4 address
    ],
)
def test_route_interface(address, expected) -> None:
    assert route_interface(ROUTES, address) == expected


def test_route_interface_prefers_the_most_specific_then_the_lowest_metric() -> None:
    more = ROUTES + "eth3\t0000000A\t00000000\t0001\t0\t0\t5\t0000FFFF\t0\t0\t0\n"
    assert route_interface(more, "10.0.9.9") == "eth3"  # /16 beats /8
    more += "eth4\t0000000A\t00000000\t0001\t0\t0\t1\t0000FFFF\t0\t0\t0\n"
    assert route_interface(more, "10.0.9.9") == "eth4"  # same /16, lower metric
    assert route_interface(ROUTES.splitlines()[0], "10.0.9.9") is None  # no routes at all


@pytest.mark.parametrize(
    ("configured", "existing", "route", "expected"),
    [
        # SageMaker: the configured interface exists.
        ("eth0", ["lo", "eth0"], "eth0", "eth0"),
        ("ethwe", ["lo", "ethwe", "eth0"], "eth0", "ethwe"),
        # SDK v3 local mode: "ethwe" is configured, the container has eth0 only.
        ("ethwe", ["lo", "eth0"], "eth0", "eth0"),
        # Missing from the resource config: the route to the master.
        (None, ["lo", "eth0"], "eth0", "eth0"),
        ("", ["lo", "eth0"], "eth0", "eth0"),
        # Several interfaces: the one that leads to the master, not the first.
        ("ethwe", ["lo", "eth0", "eth1"], "eth1", "eth1"),
        (None, ["lo", "eth0", "eth1"], "eth1", "eth1"),
        # Nothing that works is known: leave it to gloo / NCCL.
        ("ethwe", ["lo", "eth0"], None, None),
        (None, ["lo", "eth0"], None, None),
        ("ethwe", ["lo", "eth0"], "eth9", None),  # a route over an interface not seen here
    ],
)
def test_choose_interface(configured, existing, route, expected) -> None:
    choice = choose_interface(configured, existing, route)
    assert choice.name == expected
    if configured and configured not in existing:
        assert repr(configured) in choice.reason  # the log says what was configured and why not
    if choice.name is None:
        assert choice.reason.endswith("left unset")
    elif choice.name != configured:
        assert choice.reason.endswith("using the interface of the route to the master")


def test_a_cluster_that_cannot_form_says_what_was_tried(monkeypatch) -> None:
    """The failure SDK v3 local mode met: gloo told to use an interface that is not there."""
    plan = plan_launch(hosts_env(2, 1), None, gpus_per_host=0, cpus_per_host=2)
    plan = dataclasses.replace(plan, master_addr="127.0.0.1")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "ethwe")
    # Port 0: the store takes a free port; the message names the plan's.
    with pytest.raises(JobError) as caught, cluster_failures(plan, timeout_s=30):
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", world_size=1, rank=0)
    first_line = failure_text(caught.value).splitlines()[0]
    assert first_line.startswith("The training cluster did not form: host algo-1 (node 0 of 2)")
    assert "master 127.0.0.1 at 127.0.0.1:29500 over interface ethwe (GLOO_SOCKET_IFNAME)" in (
        first_line
    )
    assert first_line.endswith("Unable to find address for: ethwe")
