"""``hetero-sp profile`` warns, and says what to do, when a fit is implausible (a bandwidth of
1e6 GB/s from timings that did not grow with the message size) or misses its samples by much."""

import dataclasses

from hetero_sp.cli import main
from hetero_sp.planner.profile import load_profile
from hetero_sp.profiling import profiler
from hetero_sp.profiling.profiler import fit_compute, fit_link, fit_warnings

SHIPPED = "configs/profiles/cpu-gloo.json"


def _exact(profile):
    """``profile`` with compute fits that match their samples exactly."""
    fits = {
        kind: fit_compute([(s, 1e-3 + 2e-6 * s) for s in (256, 512, 1024)], quadratic=False)
        for kind in profile.compute
    }
    return dataclasses.replace(profile, compute=fits, collectives={}, collective_fit_err={})


def test_exact_fits_give_no_warning():
    assert fit_warnings(_exact(load_profile(SHIPPED))) == []


def test_a_flat_collective_fit_and_a_large_error_are_named_with_what_to_do():
    flat, err = fit_link([(1e5, 1e-3), (1e6, 1e-3), (1e7, 1e-3)])
    assert flat.bandwidth_Bps > 0.99e15 and err < 1e-3  # a close fit of a meaningless line
    profile = dataclasses.replace(
        _exact(load_profile(SHIPPED)),
        collectives={"all_gather": {2: flat}, "all_to_all": {4: flat}},
        collective_fit_err={"all_gather": {2: 0.0}, "all_to_all": {4: 0.46}},
    )
    *problems, advice = fit_warnings(profile)
    assert problems[0].startswith("all_gather d=2: a fitted bandwidth of 1e+06 GB/s")
    assert "not plausible" in problems[0]
    assert any(
        p.startswith("all_to_all d=4: the fit misses a measured time by 46%") for p in problems
    )
    assert "re-run `hetero-sp profile` with more --repeats and larger --message-bytes" in advice


def test_the_command_prints_the_warnings(tmp_path, monkeypatch, capsys):
    def noisy(cfg, lengths, **kwargs):
        # Every other length measured twice as slow: no line through them.
        times = [(s, 1e-4 * s * (2 if i % 2 else 1)) for i, s in enumerate(lengths)]
        return {kind: times for kind in (*set(cfg.layers), "head")}

    monkeypatch.setattr(profiler, "time_compute", noisy)
    out = tmp_path / "profile.json"
    assert main(["profile", "--out", str(out), "--lengths", "32,64,128,256"]) == 0
    err = capsys.readouterr().err
    assert "warning: compute S: the fit misses a measured time by" in err
    assert "warning: plans priced with these fits inherit their errors: re-run" in err
    assert out.is_file()
