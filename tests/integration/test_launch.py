"""The launchers on this machine in gloo mode, and ``hetero_sp.train --dry-run``.

Single node (2 CPU ranks), two "nodes" on localhost (two launchers, one rendezvous), and the
SLURM script run through fake srun/scontrol/hostname (tests/fake_slurm: each fake node is this
machine) each train 2 steps and print the topology once; none leaves a process behind. The dry
run prints plans that cover the sampler's batches and every rank, never imports DeepSpeed, and
fails on an impossible batch with the planner's own message.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hetero_sp.config import load_config
from hetero_sp.data.open_corpus import open_corpus
from hetero_sp.data.samplers import build_sampler
from hetero_sp.engine.dry_run import _bytes
from hetero_sp.engine.plan_modes import build_cost_model
from hetero_sp.planner.memory import model_state_bytes
from tests.integration.test_golden_losses import _prepare
from tests.launch_common import (
    ROOT,
    SHIMS,
    SMALL,
    check_none_left,
    collect,
    finish,
    free_port,
    launch_env,
    run,
    start,
    topology_lines,
    trained_steps,
)

H100 = str(ROOT / "configs" / "profiles" / "h100x8-estimate.json")
NO_GPU = "no GPU found: falling back to"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("launch") / "dataset"
    _prepare(out)
    return out


def _train_args(dataset: Path, out_dir: Path) -> list[str]:
    return ["--config", "configs/cpu-tiny.toml", *SMALL, f"data.dataset={dataset}",
            f"train.out_dir={out_dir}"]  # fmt: skip


def _gpu() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.slow
def test_single_node_launcher_trains_two_cpu_ranks(dataset, tmp_path):
    p = free_port()
    rc, out = run(
        ["bash", "launch/torchrun_single_node.sh", "--nproc-per-node", "2", "--master-port",
         str(p), "--log-dir", str(tmp_path / "logs"), *_train_args(dataset, tmp_path / "run")],
        launch_env(),
        str(tmp_path),
    )  # fmt: skip
    assert rc == 0, out[-6000:]
    assert f"rendezvous c10d 127.0.0.1:{p}" in out
    if not _gpu():
        assert f"{NO_GPU} 2 gloo CPU processes" in out
    [line] = topology_lines(out)  # once, by rank 0
    assert "[rank0]" in line
    assert "2 ranks = 1 node x 2 processes; backend gloo on CPU" in line or _gpu()
    assert "group shapes any: sizes 1 2 inside a node" in line
    assert trained_steps(tmp_path / "run") == [1, 2]
    # Per-rank logs: torchrun's <log dir>/<run id>/attempt_0/<local rank>/{stdout,stderr}.log
    [run_dir] = (tmp_path / "logs").iterdir()
    rank0, rank1 = (run_dir / "attempt_0" / r / "stderr.log" for r in ("0", "1"))
    assert "topology:" in rank0.read_text() and "topology:" not in rank1.read_text()


@pytest.mark.slow
def test_multi_node_launcher_two_local_nodes(dataset, tmp_path):
    p = free_port()
    procs = {}
    for node in (1, 0):  # the joining node first: it must wait for the host, not fail
        env = launch_env(NNODES="2", NODE_RANK=str(node), MASTER_ADDR="127.0.0.1",
                         MASTER_PORT=str(p), NPROC_PER_NODE="1",
                         LOG_DIR=str(tmp_path / f"logs{node}"))  # fmt: skip
        args = _train_args(dataset, tmp_path / "run")
        procs[node] = start(["bash", "launch/torchrun_multi_node.sh", *args], env)
    outs = {node: collect(proc, str(tmp_path)) for node, proc in procs.items()}
    check_none_left(list(procs.values()), str(tmp_path))
    for node, proc in procs.items():
        assert proc.returncode == 0, f"node {node}:\n{outs[node][-6000:]}"
    assert "node 0 of 2" in outs[0] and "(this node hosts it)" in outs[0]
    assert "node 1 of 2" in outs[1] and "(joins it)" in outs[1]
    lines = topology_lines(outs[0]) + topology_lines(outs[1])
    assert len(lines) == 1, lines
    assert "2 ranks = 2 nodes x 1 process;" in lines[0]
    assert "SP node size 1 (processes per node)" in lines[0]
    assert trained_steps(tmp_path / "run") == [1, 2]


@pytest.mark.slow
def test_slurm_script_with_fake_slurm(dataset, tmp_path):
    p, log = free_port(), tmp_path / "srun.jsonl"
    env = launch_env(
        PATH=f"{SHIMS}:{launch_env()['PATH']}",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NODELIST="fake[01-02]",
        SLURM_NNODES="2",
        SLURMD_NODENAME="fake01",  # the batch step runs on the first node
        SLURM_SUBMIT_DIR=str(ROOT),
        FAKE_SLURM_LOG=str(log),
        MASTER_PORT=str(p),
        NPROC_PER_NODE="1",
        LOG_DIR=str(tmp_path / "logs"),
    )
    cmd = ["bash", "launch/slurm.sbatch", *_train_args(dataset, tmp_path / "run")]
    rc, out = run(cmd, env, str(tmp_path))
    assert rc == 0, out[-6000:]
    assert f"job 4242 on 2 node(s): fake01 fake02; head node fake01 (127.0.0.1:{p})" in out
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c["nodes"] for c in calls] == [["fake01"], ["fake01", "fake02"]]
    assert calls[0]["argv"][-2:] == ["hostname", "--ip-address"]
    assert "--kill-on-bad-exit=1" in calls[1]["argv"]
    # NODE_RANK came from each task's SLURM_NODEID; the rendezvous id from the job id.
    assert "node 0 of 2" in out and "node 1 of 2" in out
    assert out.count("id slurm-4242 (this node hosts it)") == 1
    [line] = topology_lines(out)
    assert "2 ranks = 2 nodes x 1 process;" in line
    assert trained_steps(tmp_path / "run") == [1, 2]


_DRY_RUN = """
import sys, torch.distributed as dist
from hetero_sp.train import main
code = main(sys.argv[1:])
assert "deepspeed" not in sys.modules, "the dry run imported DeepSpeed"
assert not dist.is_initialized(), "the dry run joined a process group"
sys.exit(code)
"""


def _dry_run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _DRY_RUN, "--dry-run", *args], cwd=ROOT,
                          env=launch_env(), capture_output=True, text=True, timeout=300)  # fmt: skip


def _memory_gb(overrides: list[str], world: int, node: int, size: int, tokens: int) -> float:
    """planner.memory_gb at which a group of ``size`` ranks holds exactly ``tokens`` tokens."""
    cost = build_cost_model(load_config(None, overrides), world, node, log=False)
    return cost.groups[size].memory(tokens) / cost.topology.memory_fraction / 2**30


def test_dry_run_plans_for_64_ranks_without_deepspeed(dataset):
    base = ["model.dim=32", "model.ffn_dim=64", "data.tokens_per_step=16384",
            "data.max_seq_len=1024", f"data.dataset={dataset}", "parallel.node_size=8",
            f"planner.profile={H100}"]  # fmt: skip
    # Memory for ~600 tokens per rank: the 1024-token sequences need groups of 2 or more.
    overrides = [*base, f"planner.memory_gb={_memory_gb(base, 64, 8, 1, 600)}"]
    proc = _dry_run(["--world-size", "64", "--dry-run-steps", "2", *overrides])
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert "topology: 64 ranks = 8 nodes x 8 processes;" in out
    assert "group shapes any: sizes 1-8 inside a node, 16 24 32 40 48 56 64 on whole nodes" in out

    cfg = load_config(None, overrides)
    sampler = build_sampler(cfg.data, open_corpus(cfg.data))
    steps = re.split(r"^step (\d+): ", out.split("memory per rank")[0], flags=re.M)[1:]
    assert [int(s) for s in steps[::2]] == [1, 2]
    multi_rank_groups = 0
    for step, text in zip(steps[::2], steps[1::2]):
        lengths = sampler.batch(int(step) - 1).lengths
        assert text.startswith(f"{len(lengths)} sequences, {sum(lengths)} tokens")
        sequences = tokens = 0
        for mb in text.split("  micro-batch ")[1:]:
            covered = []
            for row in re.findall(r"^    (\d+)(?:-(\d+))?\s+(.*)$", mb, flags=re.M):
                first, last = int(row[0]), int(row[1] or row[0])
                covered += range(first, last + 1)
                if row[2] == "idle":
                    continue
                count, toks, strategy = row[2].split()[:3]
                sequences, tokens = sequences + int(count), tokens + int(toks)
                if last > first:
                    multi_rank_groups += 1
                    assert re.fullmatch(r"(ulysses|allgather_kv)/(lasp2|zeco)", strategy)
                else:
                    assert strategy == "local"
            assert covered == list(range(64)), f"step {step}: groups do not tile the ranks"
        assert (sequences, tokens) == (len(lengths), sum(lengths))
    assert multi_rank_groups > 0

    cost = build_cost_model(cfg, 64, 8, log=False)
    for z in range(4):
        states = model_state_bytes(cost.num_params, z, 64, cost.profile.precision)
        assert f"ZeRO-{z} {_bytes(states)}" in out
    assert "ZeRO-1 " + _bytes(cost.state_bytes) + " (this run)" in out
    assert f"limit {_bytes(cost.memory_limit_bytes)}" in out


def test_dry_run_impossible_batch_fails_with_planner_message(dataset):
    base = ["model.dim=32", "model.ffn_dim=64", "data.tokens_per_step=4096",
            "data.max_seq_len=1024", f"data.dataset={dataset}"]  # fmt: skip
    # Even both ranks together hold only 150 tokens: the batch's long sequences fit nowhere.
    overrides = [*base, f"planner.memory_gb={_memory_gb(base, 2, 2, 2, 150)}"]
    proc = _dry_run(["--world-size", "2", *overrides])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    cfg = load_config(None, overrides)
    lengths = build_sampler(cfg.data, open_corpus(cfg.data)).batch(0).lengths
    with pytest.raises(ValueError) as planner_error:
        build_cost_model(cfg, 2, 2, log=False).check_lengths(lengths)
    assert f"error: step 1 cannot be planned: {planner_error.value}" in proc.stderr
    assert "even on a group of 2 GPUs" in proc.stderr and "Traceback" not in proc.stderr
    assert "memory per rank" not in proc.stdout


@pytest.mark.slow
def test_dry_run_through_launcher_prints_once(dataset, tmp_path):
    rc, out = run(
        ["bash", "launch/torchrun_single_node.sh", "--nproc-per-node", "2", "--master-port",
         str(free_port()), "--log-dir", str(tmp_path / "logs"), "--dry-run", "--dry-run-steps", "1",
         *_train_args(dataset, tmp_path / "run")],
        launch_env(),
        str(tmp_path),
    )  # fmt: skip
    assert rc == 0, out[-4000:]
    assert out.count("dry run (no DeepSpeed, no training): planning for 2 ranks") == 1
    assert "[default0]:topology: 2 ranks = 1 node x 2 processes" in out
    assert "[default1]:" not in out  # rank 1 returned before printing anything
    assert "step 1: " in out and "memory per rank" in out
    assert not (tmp_path / "run").exists()


def test_launcher_argument_errors():
    rc, out = run(
        ["bash", "launch/torchrun_multi_node.sh", "--config", "x.toml"], launch_env(), None
    )
    assert rc == 2 and "set NNODES" in out
    env = launch_env(NNODES="2", NODE_RANK="2", MASTER_ADDR="127.0.0.1")
    rc, out = run(["bash", "launch/torchrun_multi_node.sh"], env, None)
    assert rc == 2 and "NODE_RANK must be below NNODES=2, got 2" in out
    rc, out = run(["bash", "launch/torchrun_single_node.sh", "--max-restarts"], launch_env(), None)
    assert rc == 2 and "--max-restarts needs a value" in out


def test_world_size_without_dry_run_is_refused(capsys):
    from hetero_sp.train import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--world-size", "4"])
    assert exit_info.value.code == 2
    assert "--world-size only applies to --dry-run" in capsys.readouterr().err


@pytest.mark.slow
def test_stopped_launcher_stops_its_workers(dataset, tmp_path):
    """SIGTERM to the launcher (exec'd into torchrun) ends every worker: a job scheduler's
    cancel leaves nothing running."""
    args = [*_train_args(dataset, tmp_path / "run"), "train.steps=100000"]
    proc = start(
        ["bash", "launch/torchrun_single_node.sh", "--nproc-per-node", "2", "--master-port",
         str(free_port()), "--log-dir", str(tmp_path / "logs"), *args],
        launch_env(),
    )  # fmt: skip
    seen = []
    for line in proc.stdout:  # training has started once rank 0 printed the topology
        seen.append(line)
        if "topology:" in line:
            break
    assert any("topology:" in line for line in seen), "".join(seen)[-4000:]
    proc.terminate()
    finish(proc, str(tmp_path), timeout=120)  # fails if a worker outlives the launcher
    assert proc.returncode != 0


def test_topology_line_lists_the_group_shapes():
    from hetero_sp.engine.topology_report import describe_topology

    line = describe_topology(12, nodes=3, per_node=4, node_size=4, sp_mode="hetero", max_groups=9)
    assert line.startswith("12 ranks = 3 nodes x 4 processes; SP node size 4")
    # any size inside a node, then whole nodes
    assert "group shapes any: sizes 1-4 inside a node, 8 12 on whole nodes" in line
    assert "process groups made on first use, at most 9 kept" in line
    pow2 = describe_topology(
        12, nodes=3, per_node=4, node_size=4, sp_mode="hetero", group_shapes="power_of_two"
    )
    assert "group shapes power_of_two: sizes 1 2 4 inside a node, 8 12 on whole nodes" in pow2
    with pytest.raises(ValueError, match="launch the same number of processes on every node"):
        describe_topology(12, nodes=2, per_node=4, node_size=4, sp_mode="hetero")
