"""`make bench` on a minimal setting: every method of both modes runs end to end and every
record carries every key (docs/force-calls.md, docs/metrics.md); no timing is asserted. Plus the pieces
(frame-interval arithmetic, best-plain choice, README markers, config errors)."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import yaml
from conftest import ROOT
from helpers import tiny_bench_config


def load_bench_cli():
    spec = importlib.util.spec_from_file_location("bench_cli", ROOT / "benchmarks" / "bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    cfg = tmp / "bench.yaml"
    cfg.write_text(yaml.safe_dump(tiny_bench_config(tmp)))
    readme = tmp / "README.md"
    readme.write_text("# x\n\n<!-- bench:start -->\nold\n<!-- bench:end -->\n\nrest\n")
    rc = load_bench_cli().main(["--config", str(cfg), "--update-readme", str(readme), "--log-level", "WARNING"])
    assert rc == 0
    return tmp


@pytest.mark.slow
def test_bench_end_to_end_every_key(bench_run):
    from mdkstep.bench.run import RECORD_KEYS

    out = bench_run / "bench"
    result = json.loads((out / "bench.json").read_text())
    recs = result["records"]
    # MM: reference, HMR 4 fs, Verlet max-stable 3 fs (the loose scan threshold), hybrid k4; QM: 0.25, 0.5, hybrid k4
    got = {(r["mode"], r["method"]) for r in recs}
    assert got == {("mm", "plain_2fs"), ("mm", "plain_4fs_hmr"), ("mm", "plain_3fs_maxstable"), ("mm", "hybrid_k4"),
                   ("mm", "hybrid_k4+4"), ("mm", "mvv_4fs"), ("mm", "exact_k2"),
                   ("qm", "plain_0.25fs"), ("qm", "plain_0.5fs"), ("qm", "hybrid_k4"), ("qm", "mvv_0.5fs"),
                   ("qm", "exact_k4")}
    must = ("force_calls_per_ps", "wall_s_per_ps", "wall_s_per_ps_min", "force_call_reduction", "wall_speedup",
            "bond_w1_A", "bond_w1_A_replica", "angle_w1_deg", "rdf_l1", "vacf_l2", "max_structure_ratio",
            "temperature_mean_K", "nve_drift_kj_mol_ps", "nan_frames")
    for r in recs:
        assert set(r) == set(RECORD_KEYS), r["method"]
        for key in must:
            assert r[key] is not None, (r["mode"], r["method"], key)
        assert r["nan_frames"] == 0
        if r["kind"] == "hybrid":
            assert r["model_ms_per_jump"] > 0 and r["force_calls_source"] == "engine_counter"
            assert r["fallbacks"] is not None and r["jumps_attempted"] > 0
        if r["kind"] == "hybrid":
            assert r["filter_ke_change_mean"] is not None and r["filter_ke_change_mean"] >= 0
        if r["kind"] == "exact":  # exact mode and Metropolized Verlet: acceptance, engine-counted calls
            assert 0.0 <= r["acceptance"] <= 1.0 and r["force_calls_source"] == "engine_counter" and r["k"] in (2, 4)
            assert r["model_ms_per_jump"] > 0 and r["jumps_attempted"] > 0
        assert r["ess_per_force_call_U"] is None or r["ess_per_force_call_U"] > 0
    for mode, dt in (("mm", 2.0), ("qm", 0.25)):
        ref = next(r for r in recs if r["mode"] == mode and r["reference"])
        assert ref["dt_fs"] == dt and ref["force_call_reduction"] == 1.0
        # replica 1 vs 0: one of the three pairs whose largest distance is the floor
        assert 0 < ref["bond_w1_A_ratio"] <= 1.0 + 1e-12 and ref["faithful"]
        assert (out / mode / "runs" / ("ethanol" if mode == "mm" else "water") / "ref_r2.npz").is_file()
    mm_ref = next(r for r in recs if r["mode"] == "mm" and r["reference"])
    assert mm_ref["force_calls_per_ps"] == pytest.approx(500.0)
    assert all(r["force_calls_source"] == "integrator_steps" for r in recs if r["mode"] == "mm" and r["kind"] == "plain")
    qm_ref = next(r for r in recs if r["mode"] == "qm" and r["reference"])
    assert qm_ref["force_calls_source"] == "engine_counter" and qm_ref["force_calls_per_ps"] >= 4000.0
    assert result["meta"]["modes"]["mm"]["verlet_scan"]["ethanol"]["largest_stable_dt_fs"] == 3.0
    assert result["meta"]["machine"]["cores"] >= 1
    for r in recs:  # break-even: the inline-trained models' cost from this run's training runs and training
        if r["kind"] == "hybrid" or r["method"].startswith("exact_"):
            assert r["model_source"] == "trained" and r["model_cost_force_calls"] > 0 and r["model_cost_wall_s"] > 0
        else:
            assert r["model_source"] is None and r["break_even_ps_force_calls"] is None
    checks = result["meta"]["modes"]["qm"]["reference_check"]["water"]
    assert [c["replica"] for c in checks] == [0, 1, 2] and all(c["n_dof"] == 6 for c in checks)
    assert all(c["mean_temperature_K"] > 0 and "ks_p" in c for c in checks)
    from mdkstep.trajectory import load_trajectory

    assert load_trajectory(out / "mm" / "runs" / "ethanol" / "hybrid_k4.npz").metadata["friction"] == 30.0  # by k
    sched = next(r for r in recs if r["method"] == "hybrid_k4+4")  # two sub-strides of 8 fs: 2 calls per 16 fs cycle
    assert sched["k"] == 8 and sched["fallbacks"] == 0 and sched["force_calls_per_ps"] >= 125.0
    sched_traj = load_trajectory(out / "mm" / "runs" / "ethanol" / "hybrid_k4+4.npz")
    assert sched_traj.metadata["k"] == 8 and sched_traj.metadata["friction"] == 25.0
    md = (out / "bench.md").read_text()
    assert "exact_k4" in md and "mvv_0.5fs" in md and "mvv_4fs" in md and "Exact-mode shear models" in md
    mm_exact = load_trajectory(out / "mm" / "runs" / "ethanol" / "exact_k2.npz")
    assert mm_exact.metadata["constraints"] == "hbonds" and mm_exact.metadata["n_constraints"] == 6
    assert "hybrid_k4" in md and "### Fidelity" in md and "### Break-even" in md and "### Reference check" in md
    assert (out / "pareto.png").stat().st_size > 1000
    readme = (bench_run / "README.md").read_text()
    assert "old" not in readme and "| qm | water | hybrid_k4 |" in readme and readme.endswith("rest\n")


@pytest.mark.slow
def test_bench_rerun_reuses_runs_and_models(bench_run):
    """A second run finds every trajectory and model on disk (resume after an interruption)."""
    from mdkstep.pipeline.models import ensure_model

    k4 = bench_run / "bench" / "mm" / "models" / "k4"
    mtime = (k4 / "best.pt").stat().st_mtime
    ck, metrics = ensure_model("mm", 4, [], k4, "unused", {}, "unused", {}, None)
    assert ck == k4 / "best.pt" and ck.stat().st_mtime == mtime and "test" in metrics


@pytest.mark.slow
def test_cached_learned_runs_are_reused_only_with_the_same_model(bench_run, tmp_path):
    """A finished hybrid / exact run is reused when its model file and settings are the ones it
    was made with; after a new model is shipped it is removed and run again, never reused."""
    from mdkstep.bench.core import cached_stats, run_fingerprint
    from mdkstep.hybrid.config import HybridConfig

    out = bench_run / "bench" / "mm" / "runs" / "ethanol" / "hybrid_k4.npz"
    stats = json.loads(out.with_suffix(".stats.json").read_text())
    assert cached_stats(out, stats["bench_fingerprint"])["force_calls"] == stats["force_calls"]
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"model a")
    b.write_bytes(b"model b")
    cfg = HybridConfig(k=4, dt_fs=2.0, temperature_K=300.0)
    fa = run_fingerprint(a, cfg, 1.0, 7)
    assert fa == run_fingerprint(a, cfg, 1.0, 7) and fa != run_fingerprint(b, cfg, 1.0, 7)
    assert fa != run_fingerprint(a, cfg, 1.0, 8) and run_fingerprint(None, cfg, 1.0, 7)["checkpoint_sha256"] is None
    run = tmp_path / "run.npz"
    run.write_bytes(b"x")
    run.with_suffix(".stats.json").write_text(json.dumps({"bench_fingerprint": fa}))
    assert cached_stats(run, fa) == {"bench_fingerprint": fa}
    assert cached_stats(run, run_fingerprint(b, cfg, 1.0, 7)) is None
    assert not run.exists() and not run.with_suffix(".stats.json").exists()


def test_common_interval():
    from mdkstep.pipeline.mode import common_interval_ps

    assert common_interval_ps(2.0, 2.0) == pytest.approx(0.002)
    assert common_interval_ps(24.0, 2.0) == pytest.approx(0.024)
    assert common_interval_ps(3.0, 2.0) == pytest.approx(0.006)
    assert common_interval_ps(0.25, 4.0) == pytest.approx(0.004)
    assert common_interval_ps(0.25, 0.5) == pytest.approx(0.0005)


def test_best_plain_and_ratios():
    from mdkstep.bench.run import add_ratios

    recs = [{"method": "plain_2fs", "kind": "plain", "reference": True, "faithful": True, "force_calls_per_ps": 500.0,
             "wall_s_per_ps": 0.02},
            {"method": "plain_4fs_hmr", "kind": "plain", "reference": False, "faithful": True,
             "force_calls_per_ps": 250.0, "wall_s_per_ps": 0.01},
            {"method": "plain_5fs", "kind": "plain", "reference": False, "faithful": False,
             "force_calls_per_ps": 200.0, "wall_s_per_ps": 0.008},
            {"method": "hybrid_k8", "kind": "hybrid", "reference": False, "faithful": False,
             "force_calls_per_ps": 62.5, "wall_s_per_ps": 0.5}]
    add_ratios(recs)
    h = recs[-1]
    assert h["best_plain_method"] == "plain_4fs_hmr"  # the unfaithful 5 fs run does not count
    assert h["force_call_reduction"] == pytest.approx(8.0) and h["force_call_reduction_vs_best_plain"] == pytest.approx(4.0)
    assert h["wall_speedup_vs_best_plain"] == pytest.approx(0.02)


def test_readme_without_markers_is_a_clear_error(tmp_path):
    from mdkstep.bench.report import update_readme
    from mdkstep.utils import MdkstepError

    p = tmp_path / "README.md"
    p.write_text("no markers\n")
    with pytest.raises(MdkstepError, match="README.md: no '<!-- bench:start -->'"):
        update_readme(p, {"meta": {}, "records": []})


def test_one_reference_replica_is_refused(tmp_path, capsys):
    from mdkstep.config import run_cli

    with pytest.raises(SystemExit) as e:
        run_cli(load_bench_cli().main, ["--config", str(ROOT / "configs" / "bench.yaml"), "--set", "ref_replicas=1",
                                        "--out-dir", str(tmp_path)])
    assert e.value.code == 2 and "ref_replicas" in capsys.readouterr().err


def test_bad_config_key_names_the_file(tmp_path, capsys):
    p = tmp_path / "b.yaml"
    p.write_text("mm_time_ps: 10\nmm_tme_ps: 5\n")
    with pytest.raises(SystemExit) as e:
        from mdkstep.config import run_cli

        run_cli(load_bench_cli().main, ["--config", str(p)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert str(p) in err and "mm_tme_ps" in err and len(err.strip().splitlines()) == 1


def test_engine_vv_segment_conserves_energy():
    """The plain-MD timer's velocity Verlet on an analytic harmonic pair: the force calls are
    the engine's own count, and U + K is conserved to O(dt^2)."""
    from mdkstep.baselines.plain import engine_vv_segment
    from mdkstep.engines.base import ForceEngine

    class Harmonic(ForceEngine):
        def __init__(self):
            super().__init__(np.array([1.0, 1.0]), np.array([1, 1]))

        def _compute(self, x):
            d = x[1] - x[0]
            r = np.linalg.norm(d)
            f1 = -1000.0 * (r - 0.1) * d / r  # k = 1000 kJ/mol/nm^2, r0 = 0.1 nm
            return 0.5 * 1000.0 * (r - 0.1) ** 2, np.array([-f1, f1])

    eng = Harmonic()
    x0 = np.array([[0.0, 0.0, 0.0], [0.11, 0.0, 0.0]])
    seg, x, v, f = engine_vv_segment(eng, x0, np.zeros((2, 3)), 0.5, 400)
    assert seg.steps == 400 and seg.force_calls == 401 and seg.simulated_ps == pytest.approx(0.2)
    assert seg.force_calls_source == "engine_counter"
    e = np.array(seg.energies)
    assert np.ptp(e) < 1e-3 * e[0]  # (omega dt)^2 / 8 ~ 6e-5 relative
    seg2 = engine_vv_segment(eng, x, v, 0.5, 10, f0=f)[0]
    assert seg2.force_calls == 10  # forces carried over: no extra call at the start


def test_break_even_lines():
    """cost / saving per ps vs the best faithful plain method; n/a where the hybrid saves nothing."""
    from mdkstep.bench.breakeven import add_break_even, model_cost

    recs = [{"method": "plain_1fs", "kind": "plain", "force_calls_per_ps": 1000.0, "wall_s_per_ps": 7.0,
             "best_plain_method": "plain_1fs"},
            {"method": "hybrid_k16", "kind": "hybrid", "force_calls_per_ps": 250.0, "wall_s_per_ps": 3.0,
             "best_plain_method": "plain_1fs"},
            {"method": "hybrid_k8", "kind": "hybrid", "force_calls_per_ps": 500.0, "wall_s_per_ps": 9.0,
             "best_plain_method": "plain_1fs"}]
    card = {"cost": {"force_calls": 750000, "data_wall_s": 3000.0, "train_wall_s": 1000.0, "total_wall_s": 4000.0}}
    costs = {"hybrid_k16": model_cost("shipped", card, None, None),
             "hybrid_k8": model_cost("trained", None, {"force_calls": 750000, "wall_s": 3000.0}, {"wall_s": 600.0})}
    add_break_even(recs, costs)
    plain, k16, k8 = recs
    assert plain["model_source"] is None and plain["break_even_ps_wall"] is None
    assert k16["saving_force_calls_per_ps"] == 750.0 and k16["break_even_ps_force_calls"] == pytest.approx(1000.0)
    assert k16["saving_wall_s_per_ps"] == 4.0 and k16["break_even_ps_wall"] == pytest.approx(1000.0)
    assert k8["model_cost_wall_s"] == 3600.0 and k8["break_even_ps_force_calls"] == pytest.approx(1500.0)
    assert k8["saving_wall_s_per_ps"] == -2.0 and k8["break_even_ps_wall"] is None  # slower: never pays back
    none_faithful = [dict(r, best_plain_method=None) for r in recs]
    add_break_even(none_faithful, costs)
    assert none_faithful[1]["break_even_ps_force_calls"] is None and none_faithful[1]["model_source"] == "shipped"


def test_kinetic_check_gamma_law():
    """Maxwell-Boltzmann velocities pass (T within 5 %, KS p not small); too-cold ones fail both."""
    from mdkstep.analysis.refcheck import decorrelation_stride, kinetic_check
    from mdkstep.utils import KB_KJ_PER_MOL_K

    rng = np.random.default_rng(0)
    masses = np.array([16.0, 1.008, 1.008, 12.0, 1.008])
    sigma = np.sqrt(KB_KJ_PER_MOL_K * 300.0 / masses)[None, :, None]
    v = rng.normal(size=(3000, 5, 3)) * sigma
    good = kinetic_check(v, masses, 300.0)
    assert good["n_dof"] == 12 and good["temperature_ok"] and good["gamma_ok"] and good["ks_p"] > 0.01
    assert good["stride_frames"] <= 2  # independent frames: no thinning to speak of
    cold = kinetic_check(0.9 * v, masses, 300.0)
    assert not cold["temperature_ok"] and not cold["gamma_ok"]
    assert decorrelation_stride(np.repeat(rng.normal(size=300), 10)) >= 10  # 10-frame plateaus


@pytest.mark.parametrize("name", ["bench.yaml", "bench_full.yaml", "bench_generalization.yaml"])
def test_shipped_bench_configs_resolve_their_models(name):
    """The committed bench configs load and validate (their schedules and exact-mode rows name
    valid strides); every k they name has a shipped model (direct jump and exact mode) where
    configs/bench.yaml relies on one."""
    from mdkstep.bench.learned import exact_method_names, schedule_name
    from mdkstep.config import load_config
    from mdkstep.pipeline.config import BenchConfig
    from mdkstep.shipped import shipped_path

    cfg = load_config(BenchConfig, ROOT / "configs" / name)
    cfg.validate()
    for mode in ("qm", "mm"):
        names = exact_method_names(getattr(cfg, f"{mode}_mvv_dts_fs"), getattr(cfg, f"{mode}_exact_ks"),
                                   getattr(cfg, f"{mode}_ref_dt_fs"))
        assert all(isinstance(k, int) and k >= 1 for k in names.values()), (mode, names)
    assert all(schedule_name(s).startswith("hybrid_k") for s in cfg.mm_schedules)
    if name == "bench_generalization.yaml":  # never trains: given foundation checkpoints, held-out molecules
        assert not cfg.use_shipped_models and cfg.heldout_one_jump
        assert cfg.mm_smiles == "data/heldout_mm.smi" and cfg.qm_smiles == "data/heldout_qm.smi"
        assert set(cfg.mm_checkpoints) == set(cfg.mm_ks) and set(cfg.qm_checkpoints) == set(cfg.qm_ks)
    if name == "bench.yaml":
        for mode, ks in (("mm", cfg.mm_ks), ("qm", cfg.qm_ks), ("qm_exact", cfg.qm_exact_ks),
                         ("mm_exact", cfg.mm_exact_ks)):
            for k in ks:
                assert shipped_path(ROOT / cfg.models_dir, mode, k).is_file(), (mode, k)


def test_schedule_cost_counts_the_shared_data_once():
    """A stride schedule's models share the training data: its force calls and data wall time
    count once, every model's training time adds; an unknown part makes the total unknown."""
    from mdkstep.bench.breakeven import schedule_cost

    k4 = {"source": "shipped", "force_calls": 100000, "data_wall_s": 60.0, "train_wall_s": 1000.0, "wall_s": 1060.0}
    k12 = {"source": "shipped", "force_calls": 100000, "data_wall_s": 60.0, "train_wall_s": 2700.0, "wall_s": 2760.0}
    c = schedule_cost([k4, k12])
    assert c["force_calls"] == 100000 and c["train_wall_s"] == 3700.0 and c["wall_s"] == 3760.0
    assert c["source"] == "shipped+shipped"
    assert schedule_cost([k4, {**k12, "data_wall_s": None}])["wall_s"] is None


def test_learned_seeds_do_not_depend_on_the_other_rows():
    """A row's seed comes from its own name and k (and learned_seed_offset), never from its position among the
    learned rows: adding hybrid_k9 must not rerun exact_k4 with another chain."""
    from mdkstep.bench.run import learned_seed
    from mdkstep.pipeline.config import BenchConfig
    from mdkstep.pipeline.mode import Method
    cfg = BenchConfig()
    exact, mvv, hyb = Method("exact_k4", "exact", 2.0, k=4), Method("mvv_4fs", "exact", 4.0, k=1), \
        Method("hybrid_k4", "hybrid", 2.0, k=4)
    assert learned_seed(cfg, hyb) == cfg.seed + 54  # the hybrid rows' seeds of every earlier bench
    assert learned_seed(cfg, exact) != learned_seed(cfg, hyb) and learned_seed(cfg, exact) != learned_seed(cfg, mvv)
    assert learned_seed(BenchConfig(learned_seed_offset=1), exact) == learned_seed(cfg, exact) + 1


def test_schedule_keys_fixed_and_drawn_orders():
    from mdkstep.bench.learned import schedule_name, schedule_orders
    from mdkstep.pipeline.config import check_schedule
    ks = [8, 9, 10]
    check_schedule("mm_schedules", [8, 10], ks)
    check_schedule("mm_schedules", [[8, 10], [9, 9], [10, 8]], ks)
    check_schedule("mm_schedules", {"permutations": [8, 9, 10]}, ks)
    assert schedule_name([4, 12]) == "hybrid_k4+12" and schedule_orders([4, 12]) == [[4, 12]]
    assert schedule_name([[8, 10], [9, 9]]) == "hybrid_k8+10,9+9"
    import itertools
    perms = [list(o) for o in itertools.permutations([4, 8, 10, 12])]  # 24 orders: a file name too long
    assert schedule_name(perms) == "hybrid_k4+8+10+12,allperms"
    assert schedule_name({"permutations": [4, 8, 10, 12]}) == "hybrid_k4+8+10+12,allperms"
    assert schedule_orders({"permutations": [4, 12]}) == [[4, 12], [12, 4]]
    short = schedule_name(perms[:-1])
    assert len(short) <= 100 and short.startswith("hybrid_k4+8+10+12,...23orders-")
    for bad in ([8], [8, 12], [[8, 10], [9, 8]], [[8, 10]], [[8, 10], 9], {"permutations": [8, 12]},
                {"permutations": [8]}, {"perms": [8, 9]}):
        with pytest.raises(ValueError, match="mm_schedules"):
            check_schedule("mm_schedules", bad, ks)


def test_a_cached_plain_run_of_another_length_or_seed_is_refused(tmp_path):
    """The bench reuses a cached reference only when seed, step and length match: a longer
    cached reference would silently shrink the floor (issue 26)."""
    import json as _json

    import numpy as np

    from mdkstep.pipeline.mode import check_cached_run
    from mdkstep.utils import MdkstepError

    out = tmp_path / "ref_r0.npz"
    np.savez(out, metadata=np.array(_json.dumps({"seed": 1, "dt_fs": 0.25, "config": {"production_ps": 20.0}})))
    check_cached_run(out, 1, 0.25, 20.0)  # the same run: reused
    with pytest.raises(MdkstepError, match=r"ref_r0.npz: finished with other settings \(config.production_ps: "
                                           r"20.0 -> 3.0\); remove it"):
        check_cached_run(out, 1, 0.25, 3.0)
    with pytest.raises(MdkstepError, match="seed: 1 -> 2"):
        check_cached_run(out, 2, 0.25, 20.0)


def test_time_ps_by_molecule(tmp_path):
    """<mode>_time_ps_by_mol gives one molecule its own production length; a bad one is one line."""
    from mdkstep.bench.run import time_ps
    from mdkstep.config import load_config
    from mdkstep.pipeline.config import BenchConfig

    s = {"time_ps": 10.0, "time_ps_by_mol": {"ethanol": 20.0}}
    assert time_ps(s, "ethanol") == 20.0 and time_ps(s, "aspirin") == 10.0
    cfg = load_config(BenchConfig, ROOT / "configs" / "bench_full.yaml")
    assert cfg.qm_time_ps_by_mol == {"ethanol": 20.0}
    bad = tmp_path / "b.yaml"
    bad.write_text("qm_time_ps_by_mol: {ethanol: -1}\n")
    with pytest.raises(Exception, match="qm_time_ps_by_mol"):
        load_config(BenchConfig, bad).validate()
