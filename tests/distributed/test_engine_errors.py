"""How bad input on one rank reaches the others (hetero_sp.engine.errors), on two gloo ranks:
the failing rank keeps its own error, the others get PeerInputError for bad input and a plain
RuntimeError for anything else (a bug keeps its traceback)."""

import pytest

from hetero_sp.config import ConfigError
from hetero_sp.engine.checkpoint import CheckpointError
from hetero_sp.engine.errors import INPUT_ERRORS, PeerInputError, agree
from hetero_sp.engine.plan_modes import make_plan_fn
from hetero_sp.planner.ahead import broadcast_share
from hetero_sp.planner.plan import GroupPlan, MicroBatchPlan, Plan, PlanError, SolverStats
from tests.rank_pool import run_ranks


def _plan() -> Plan:
    stats = SolverStats("hand", "fixed", None, None, None, 0.0, 0, 0.0)
    group = GroupPlan(
        ranks=(0, 1),
        sequences=(0, 1),
        softmax_strategy="ulysses",
        linear_strategy="lasp2",
        tokens=12,
        predicted_s=0.0,
        memory_bytes=0.0,
    )
    mb = MicroBatchPlan(groups=(group,), makespan_s=0.0, lower_bound_s=0.0, solver=stats)
    return Plan(world_size=2, lengths=(5, 7), micro_batches=(mb,), memory_limit_bytes=1e18)


def _outcome(call) -> tuple[str, str]:
    try:
        result = call()
    except Exception as err:  # noqa: BLE001 - the error's type and text are what is compared
        return type(err).__name__, str(err)
    return "ok", repr(result)


_FAILURES = {
    "none": None,
    "checkpoint": CheckpointError("step_00000004/rng_1.pt does not match its checksum"),
    "bug": ZeroDivisionError("division by zero"),
}


def _agree(rank, world_size, failing_rank, failure):
    return _outcome(lambda: agree(_FAILURES[failure] if rank == failing_rank else None))


def test_agree_passes_when_no_rank_failed():
    assert run_ranks(_agree, 2, 1, "none") == [("ok", "None")] * 2


def test_agree_stops_every_rank_when_one_has_bad_input():
    got = run_ranks(_agree, 2, 1, "checkpoint")
    message = "step_00000004/rng_1.pt does not match its checksum"
    assert got == [("PeerInputError", f"rank 1: {message}"), ("CheckpointError", message)]


def test_agree_keeps_a_bug_a_bug_on_the_other_ranks():
    got = run_ranks(_agree, 2, 0, "bug")
    assert got == [
        ("ZeroDivisionError", "division by zero"),
        ("RuntimeError", "rank 0 failed: ZeroDivisionError: division by zero"),
    ]


def _share(rank, world_size, what):
    share = broadcast_share(src=0)
    sent = {
        "plan": _plan(),
        "plan_error": PlanError("sequence 0 (8192 tokens) needs 0.20 GiB; add GPUs"),
        "bug": KeyError("groups"),
    }[what]
    return _outcome(lambda: share(sent if rank == 0 else None))


def test_shared_plan_reaches_every_rank_unchanged():
    got = run_ranks(_share, 2, "plan")
    assert got == [("ok", repr(_plan()))] * 2


def test_plan_error_on_the_solver_is_peer_input_on_the_others():
    got = run_ranks(_share, 2, "plan_error")
    message = "sequence 0 (8192 tokens) needs 0.20 GiB; add GPUs"
    assert got == [("PlanError", message), ("PeerInputError", f"rank 0: {message}")]


def test_solver_bug_stays_a_runtime_error_on_the_others():
    got = run_ranks(_share, 2, "bug")
    assert got[0] == ("KeyError", "'groups'")
    assert got[1] == ("RuntimeError", "rank 0 failed to plan: KeyError: 'groups'")


def test_planner_input_checks_are_plan_errors():
    """The planner raises PlanError itself for a batch it cannot take, which the CLI prints as
    one line; a plain ValueError (an internal check) is not reported as bad input."""
    from hetero_sp.config import load_config
    from hetero_sp.engine.plan_modes import build_cost_model

    cfg = load_config(None, ["parallel.sp_mode=homogeneous"])
    plan_fn = make_plan_fn(cfg, build_cost_model(cfg, 2, 2, log=False))
    with pytest.raises(PlanError, match="lengths must be integers >= 1"):
        plan_fn([5, 0])
    assert issubclass(PlanError, INPUT_ERRORS) and issubclass(ConfigError, INPUT_ERRORS)
    assert not isinstance(ValueError("an internal invariant"), INPUT_ERRORS)


def test_cost_model_checks_are_user_errors():
    from hetero_sp.config import load_config
    from hetero_sp.engine.plan_modes import build_cost_model
    from hetero_sp.planner import ClusterError

    cfg = load_config(None, ["planner.memory_gb=0.001"])
    assert issubclass(ClusterError, INPUT_ERRORS)
    with pytest.raises(ClusterError, match="model states alone need"):
        build_cost_model(cfg, 2, 2, log=False)


def test_peer_input_error_is_reported_as_input():
    assert issubclass(PeerInputError, INPUT_ERRORS)
