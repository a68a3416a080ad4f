"""SageMaker environment → launch plan, over a matrix of environments (no processes started).

In the style of Lightning's cluster-environment tests: each case is the environment a launcher
would leave behind, fed to the pure `plan_launch`.
"""

from __future__ import annotations

import json

import pytest

from tft_sagemaker.errors import ConfigError, JobError
from tft_sagemaker.launch import plan_launch, read_hosts, wait_for_hosts
from tft_sagemaker.model import scaled_learning_rate


def hosts_env(n: int, current: int = 1) -> dict[str, str]:
    """What the toolkit exports on host `algo-<current>` of an n-host job."""
    hosts = [f"algo-{i}" for i in range(1, n + 1)]
    return {"SM_HOSTS": json.dumps(hosts), "SM_CURRENT_HOST": f"algo-{current}"}


def torchrun_env(n_hosts: int, gpus: int, node: int, local: int) -> dict[str, str]:
    """What `torchrun --nnodes n --nproc_per_node gpus` gives a worker (torch_distributed)."""
    return {
        **hosts_env(n_hosts, node + 1),
        "TORCHELASTIC_RUN_ID": "none",
        "WORLD_SIZE": str(n_hosts * gpus),
        "LOCAL_WORLD_SIZE": str(gpus),
        "RANK": str(node * gpus + local),
        "LOCAL_RANK": str(local),
        "GROUP_RANK": str(node),
        "MASTER_ADDR": "algo-1",
        "MASTER_PORT": "7777",
    }


def mpi_env(n_hosts: int, gpus: int, node: int, local: int) -> dict[str, str]:
    """What `mpirun` gives a process (pytorchddp / smdistributed launchers)."""
    return {
        **hosts_env(n_hosts, node + 1),
        "OMPI_COMM_WORLD_SIZE": str(n_hosts * gpus),
        "OMPI_COMM_WORLD_RANK": str(node * gpus + local),
        "OMPI_COMM_WORLD_LOCAL_RANK": str(local),
        "OMPI_COMM_WORLD_LOCAL_SIZE": str(gpus),
    }


@pytest.mark.parametrize("n_hosts", [1, 2, 4])
@pytest.mark.parametrize("gpus", [0, 1, 8])
def test_generic_estimator_runs_once_per_host(n_hosts: int, gpus: int) -> None:
    for current in range(1, n_hosts + 1):
        plan = plan_launch(hosts_env(n_hosts, current), None, gpus, cpus_per_host=8)
        devices = max(gpus, 1)
        assert plan.num_nodes == n_hosts
        assert plan.devices == devices
        assert plan.world_size == n_hosts * devices
        assert plan.node_rank == current - 1
        assert plan.accelerator == ("gpu" if gpus else "cpu")
        assert plan.backend == ("nccl" if gpus else "gloo")
        assert plan.launcher == ("single" if plan.world_size == 1 else "lightning")
        assert plan.master_addr == ("algo-1" if n_hosts > 1 else "127.0.0.1")
        assert plan.threads_per_process == 8 // devices
        if plan.launcher == "lightning":
            assert plan.lightning_env() == {
                "MASTER_ADDR": plan.master_addr,
                "MASTER_PORT": "29500",
                "NODE_RANK": str(current - 1),
            }


def test_hosts_are_parsed_not_counted_as_characters() -> None:
    # The original sample took len() of the SM_HOSTS string: 19 "nodes" for 2 hosts.
    env = {"SM_HOSTS": '["algo-1","algo-2"]', "SM_CURRENT_HOST": "algo-2"}
    assert len(env["SM_HOSTS"]) == 19
    plan = plan_launch(env, None, gpus_per_host=4, cpus_per_host=16)
    assert (plan.num_nodes, plan.devices, plan.world_size, plan.node_rank) == (2, 4, 8, 1)


def test_hosts_ranked_by_number_not_by_text() -> None:
    hosts = [f"algo-{i}" for i in range(1, 12)]
    env = {"SM_HOSTS": json.dumps(sorted(hosts)), "SM_CURRENT_HOST": "algo-10"}
    assert read_hosts(env, None) == (hosts, "algo-10")
    assert plan_launch(env, None, 1, 4).node_rank == 9


def test_resourceconfig_is_read_when_the_toolkit_did_not_export() -> None:
    config = {"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]}
    plan = plan_launch({}, config, gpus_per_host=0, cpus_per_host=4)
    assert (plan.num_nodes, plan.node_rank, plan.launcher) == (2, 1, "lightning")


def test_no_environment_at_all_is_one_local_process() -> None:
    plan = plan_launch({}, None, gpus_per_host=0, cpus_per_host=2)
    assert (plan.launcher, plan.world_size, plan.hosts) == ("single", 1, ("algo-1",))


@pytest.mark.parametrize("n_hosts", [1, 2, 4])
@pytest.mark.parametrize("gpus", [1, 8])
def test_torch_distributed_launcher(n_hosts: int, gpus: int) -> None:
    node, local = n_hosts - 1, gpus - 1
    plan = plan_launch(torchrun_env(n_hosts, gpus, node, local), None, gpus, cpus_per_host=64)
    assert plan.launcher == "torchrun"
    assert (plan.num_nodes, plan.devices, plan.world_size) == (n_hosts, gpus, n_hosts * gpus)
    assert (plan.node_rank, plan.global_rank, plan.local_rank) == (
        node,
        node * gpus + local,
        local,
    )
    assert (plan.master_addr, plan.master_port) == ("algo-1", 7777)
    assert plan.lightning_env() == {}  # torchrun's own variables are what Lightning reads


@pytest.mark.parametrize("n_hosts", [1, 2, 4])
def test_mpi_launcher(n_hosts: int) -> None:
    plan = plan_launch(mpi_env(n_hosts, 8, n_hosts - 1, 3), None, 8, cpus_per_host=96)
    assert plan.launcher == "mpi"
    assert (plan.num_nodes, plan.devices, plan.node_rank, plan.global_rank) == (
        n_hosts,
        8,
        n_hosts - 1,
        (n_hosts - 1) * 8 + 3,
    )
    assert plan.lightning_env() == {
        "MASTER_ADDR": "algo-1",
        "MASTER_PORT": "29500",
        "NODE_RANK": str(n_hosts - 1),
        "LOCAL_RANK": "3",
        "RANK": str((n_hosts - 1) * 8 + 3),
        "WORLD_SIZE": str(n_hosts * 8),
    }


def test_smddp_is_opt_in_and_needs_its_launcher() -> None:
    plan = plan_launch(mpi_env(2, 8, 0, 0), None, 8, 96, backend="smddp")
    assert plan.backend == "smddp"
    with pytest.raises(ConfigError, match="smdistributed"):
        plan_launch(hosts_env(2), None, 8, 96, backend="smddp")


def test_several_cpu_processes_on_one_host_share_its_cores() -> None:
    plan = plan_launch(hosts_env(1), None, gpus_per_host=0, cpus_per_host=2, devices=2)
    assert (plan.launcher, plan.devices, plan.threads_per_process) == ("lightning", 2, 1)
    assert plan.master_addr == "127.0.0.1"


def test_world_size_must_match_the_hosts() -> None:
    env = torchrun_env(2, 4, 0, 0) | hosts_env(3)  # torchrun thinks 2 nodes, the job has 3
    with pytest.raises(JobError, match="num_nodes x devices must equal WORLD_SIZE"):
        plan_launch(env, None, 4, 32)


@pytest.mark.parametrize(
    ("kwargs", "gpus", "message"),
    [
        ({"devices": 4}, 2, "devices=4 but this host has 2 GPU"),
        ({"devices": 3}, 0, "devices=3 CPU processes on a host with 2"),
        ({"accelerator": "gpu"}, 0, "accelerator=gpu but this host has no GPU"),
        ({"backend": "nccl"}, 0, "backend=nccl needs GPUs"),
    ],
)
def test_impossible_requests_are_refused(kwargs: dict, gpus: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_launch(hosts_env(1), None, gpus, cpus_per_host=2, **kwargs)


def test_cpu_accelerator_on_a_gpu_host() -> None:
    plan = plan_launch(hosts_env(2), None, 8, 32, accelerator="cpu")
    assert (plan.accelerator, plan.backend, plan.devices) == ("cpu", "gloo", 1)


def test_current_host_must_be_a_job_host() -> None:
    with pytest.raises(JobError, match="not among the job's hosts"):
        plan_launch({"SM_HOSTS": '["algo-1"]', "SM_CURRENT_HOST": "algo-7"}, None, 0, 2)


def test_bad_launcher_variables_name_the_variable() -> None:
    env = torchrun_env(1, 2, 0, 0) | {"LOCAL_WORLD_SIZE": "two"}
    with pytest.raises(JobError, match="LOCAL_WORLD_SIZE"):
        plan_launch(env, None, 2, 8)


def test_wait_for_hosts_is_bounded() -> None:
    wait_for_hosts(("localhost", "127.0.0.1"), timeout_s=1)
    with pytest.raises(JobError, match="did not resolve within 0 s"):
        wait_for_hosts(("algo-1.invalid",), timeout_s=0, interval_s=0)


@pytest.mark.parametrize(
    ("world", "rule", "expected"),
    [
        (1, "sqrt", 0.01),
        (4, "sqrt", 0.02),
        (16, "sqrt", 0.04),
        (8, "linear", 0.08),
        (8, "none", 0.01),
    ],
)
def test_learning_rate_grows_with_the_global_batch(world: int, rule: str, expected: float) -> None:
    assert scaled_learning_rate(0.01, world, rule) == pytest.approx(expected)
