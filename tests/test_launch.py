"""SageMaker environment → launch plan, over a matrix of environments (no processes started).

In the style of Lightning's cluster-environment tests: each case is the environment a launcher
would leave behind, fed to the pure `plan_launch`.
"""

from __future__ import annotations

import json

import pytest

from tft_sagemaker.errors import ConfigError, JobError
from tft_sagemaker.sagemaker.launch_plan import (
    HOSTS_PER_MACHINE_VAR,
    launched_by_launcher,
    plan_launch,
    read_cpu_max,
    read_hosts,
    usable_cpus,
)


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
        assert (plan.master_port, plan.local_rank) == (29500, 0)
        assert plan.global_rank == (current - 1) * devices
        assert not plan.external_launcher  # Lightning starts the node's further processes


@pytest.mark.parametrize("local", [1, 3])
def test_a_process_lightning_started_for_a_further_device(local: int) -> None:
    """Lightning's launcher starts devices - 1 more processes per node, each with LOCAL_RANK
    (and NODE_RANK, WORLD_SIZE, MASTER_*) set: the plan ranks them from it."""
    env = hosts_env(2, 2) | {"LOCAL_RANK": str(local), "NODE_RANK": "1", "WORLD_SIZE": "8"}
    plan = plan_launch(env, None, gpus_per_host=4, cpus_per_host=16)
    assert (plan.launcher, plan.node_rank, plan.local_rank) == ("lightning", 1, local)
    assert plan.global_rank == 4 + local
    assert launched_by_launcher(env) and not launched_by_launcher(hosts_env(2, 2))


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
    assert plan.external_launcher


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
    assert (plan.local_rank, plan.master_addr, plan.master_port) == (3, "algo-1", 29500)
    assert plan.external_launcher


@pytest.mark.parametrize("env", [torchrun_env(2, 4, 1, 2), mpi_env(2, 4, 1, 2)])
def test_launcher_ranks_that_disagree_are_refused(env: dict[str, str]) -> None:
    rank = "RANK" if "RANK" in env else "OMPI_COMM_WORLD_RANK"
    with pytest.raises(JobError, match="Launcher ranks disagree: global rank 5"):
        plan_launch(env | {rank: "5"}, None, 4, 32)


def test_the_resource_config_names_the_interface_for_the_cluster() -> None:
    config = {"current_host": "algo-1", "hosts": ["algo-1", "algo-2"]}
    named = plan_launch({}, config | {"network_interface_name": "eth0"}, 0, 4)
    assert named.network_interface_name == "eth0"
    assert plan_launch({}, config, 0, 4).network_interface_name is None


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


# --------------------------------------------------------------------------------------------
# CPUs a process gets: affinity, cgroup quota, training containers sharing the machine
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("affinity", "cpu_max", "cpu_count", "expected"),
    [
        ({0, 1, 2, 3}, None, 4, 4),  # a plain machine
        ({0, 1, 2, 3}, "max 100000", 4, 4),  # a cgroup without a quota
        ({0, 1}, "max 100000", 8, 2),  # taskset / docker --cpuset-cpus 0,1
        ({0, 1, 2, 3}, "200000 100000", 4, 2),  # docker --cpus 2
        ({0, 1, 2, 3}, "150000 100000", 4, 1),  # 1.5 CPUs: round down, no throttled thread
        ({0, 1}, "50000 100000", 2, 1),  # half a CPU still runs one thread
        ({0, 1}, "800000 100000", 2, 2),  # a quota above the affinity: the affinity
        (set(), None, 6, 6),  # no affinity known: the CPU count
        (None, "300000 100000", 16, 3),
    ],
)
def test_usable_cpus(affinity, cpu_max, cpu_count, expected) -> None:
    assert usable_cpus(affinity, cpu_max, cpu_count) == expected


def test_read_cpu_max_from_cgroup_v2_and_v1(tmp_path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert read_cpu_max(v2) == "150000 100000"
    v1 = tmp_path / "v1" / "cpu,cpuacct"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "cpu.cfs_quota_us").write_text("200000\n")
    assert read_cpu_max(tmp_path / "v1") == "200000 100000"
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert read_cpu_max(tmp_path / "v1") == "max 100000"
    assert read_cpu_max(tmp_path / "none") is None


@pytest.mark.parametrize(
    ("sharing", "devices", "threads"),
    [(None, 1, 8), ("1", 1, 8), ("2", 1, 4), ("2", 2, 2), ("3", 1, 2), ("16", 1, 1)],
)
def test_containers_sharing_a_machine_share_its_cpus(sharing, devices, threads) -> None:
    # Local compose and SDK local mode put every host of the job on one machine.
    env = hosts_env(2, 2) | ({HOSTS_PER_MACHINE_VAR: sharing} if sharing else {})
    plan = plan_launch(env, None, gpus_per_host=0, cpus_per_host=8, devices=devices)
    assert plan.threads_per_process == threads


@pytest.mark.parametrize("value", ["0", "two", "-1", ""])
def test_hosts_per_machine_must_be_a_count(value) -> None:
    with pytest.raises(ConfigError, match=HOSTS_PER_MACHINE_VAR):
        plan_launch(hosts_env(2) | {HOSTS_PER_MACHINE_VAR: value}, None, 0, 8)
