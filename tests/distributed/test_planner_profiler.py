"""The profiler: least-squares fits, timing the real model blocks, collectives over gloo, and
the ``hetero-sp profile`` command."""

from __future__ import annotations

import pytest

from hetero_sp.cli import main
from hetero_sp.planner.profile import load_profile
from hetero_sp.profiling.profiler import (
    fit_compute,
    fit_link,
    group_sizes,
    time_collectives,
    time_compute,
)
from tests.common import tiny_config
from tests.rank_pool import run_ranks


def test_compute_fit_recovers_exact_coefficients():
    a2, a1, fixed = 2e-8, 3e-5, 1e-3
    samples = [(s, a2 * s * s + a1 * s + fixed) for s in (128, 256, 512, 1024, 2048)]
    fit = fit_compute(samples, quadratic=True)
    assert fit.a2 == pytest.approx(a2, rel=1e-6)
    assert fit.a1 == pytest.approx(a1, rel=1e-6)
    assert fit.fixed == pytest.approx(fixed, rel=1e-6)
    assert fit.max_rel_err < 1e-9
    linear = fit_compute([(s, a1 * s + fixed) for s in (100, 200, 400)], quadratic=False)
    assert linear.a2 == 0 and linear.a1 == pytest.approx(a1, rel=1e-6)


def test_compute_fit_keeps_coefficients_non_negative():
    # A line with a negative intercept: the fixed term is dropped, the slope refitted.
    fit = fit_compute([(100, 0.9), (200, 1.9), (400, 3.9)], quadratic=False)
    assert fit.fixed == 0 and fit.a1 > 0
    assert fit.max_rel_err > 0


def test_link_fit_recovers_latency_and_bandwidth():
    samples = [(b, 2e-5 + b / 3e9) for b in (1e4, 1e5, 1e6, 1e7)]
    link, err = fit_link(samples)
    assert link.latency_s == pytest.approx(2e-5, rel=1e-6)
    assert link.bandwidth_Bps == pytest.approx(3e9, rel=1e-6)
    assert err < 1e-9


def test_fits_need_enough_samples():
    with pytest.raises(ValueError, match="at least 3 lengths"):
        fit_compute([(1, 1.0), (2, 2.0)], quadratic=True)
    with pytest.raises(ValueError, match="at least 2 message sizes"):
        fit_link([(1.0, 1.0)])


def test_times_every_block_kind_and_the_head():
    times = time_compute(tiny_config("LS"), [32, 64], repeats=1, warmup=0)
    assert set(times) == {"L", "S", "head"}
    for samples in times.values():
        assert [s for s, _ in samples] == [32, 64]
        assert all(t > 0 for _, t in samples)


def test_group_sizes():
    assert group_sizes(1) == []
    assert group_sizes(4) == [2, 4]
    assert group_sizes(6) == [2, 4, 6]


def _collectives(rank: int, world_size: int):
    return time_collectives(rank, world_size, [4096, 16384], repeats=1, warmup=0)


@pytest.mark.parametrize("world", [2, 3])
def test_times_collectives_over_every_group_size(world):
    out = run_ranks(_collectives, world)[0]
    assert set(out) == {"all_to_all", "all_gather", "send_recv"}
    for kind, by_size in out.items():
        assert sorted(by_size) == group_sizes(world)
        for d, samples in by_size.items():
            numel = [max(d, b // 4 // d * d) for b in (4096, 16384)]
            per_rank = {"all_to_all": (d - 1) / d, "all_gather": d - 1, "send_recv": 1}[kind]
            assert [b for b, _ in samples] == [n * 4 * per_rank for n in numel]
            assert all(t > 0 for _, t in samples)


def test_profile_command_writes_a_loadable_profile(tmp_path, capsys):
    out = tmp_path / "profile.json"
    model = ["model.dim=32", "model.num_heads=4", "model.num_kv_heads=2", "model.ffn_dim=48"]
    code = main(["profile", "--out", str(out), "--lengths", "32,64,128", "--repeats", "1", *model])
    assert code == 0
    profile = load_profile(out)
    assert profile.source == "measured" and profile.collectives == {}
    assert profile.model.dim == 32 and set(profile.compute) == {"L", "S", "head"}
    assert "max rel err" in capsys.readouterr().out


def test_profile_command_rejects_bad_lengths(tmp_path, capsys):
    code = main(["profile", "--out", str(tmp_path / "p.json"), "--lengths", "12,abc"])
    assert code == 2
    assert "--lengths: write comma-separated integers" in capsys.readouterr().err
