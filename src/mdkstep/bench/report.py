"""Benchmark outputs: bench.json (every record), bench.md (tables), pareto.png, and the
README results table between ``<!-- bench:start -->`` and ``<!-- bench:end -->``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mdkstep.analysis.evaluation import fmt
from mdkstep.analysis.plots import pareto_grid
from mdkstep.utils import MdkstepError, atomic_write_json, atomic_write_text, element_symbol

README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"
MODE_TITLES = {"mm": "MM (OpenMM + OpenFF, HBonds constraints)", "qm": "QM (GFN2-xTB via tblite, no constraints)"}


def _x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}x"


def _dist(r: dict[str, Any], key: str) -> str:
    """A distance with its ratio to the replica floor: ``0.0123 (1.4x)``."""
    v, ratio = r.get(key), r.get(f"{key}_ratio")
    return f"{fmt(v, 3)} ({_x(ratio)})" if ratio is not None else fmt(v, 3)


def _per_element(t: dict[str, float] | None) -> str:
    """Per-element kinetic temperatures, e.g. ``H 301 / C 296 / O 310`` (equipartition check)."""

    named = {element_symbol(int(el)) if str(el).isdigit() else el: v for el, v in (t or {}).items()}  # older JSON: Z keys
    return " / ".join(f"{el} {v:.0f}" for el, v in sorted(named.items())) or "n/a"


def _wall(r: dict[str, Any]) -> str:
    return f"{fmt(r['wall_s_per_ps'], 3)} ({fmt(r['wall_s_per_ps_min'], 3)}, ±{100 * (r['timing_spread'] or 0):.0f}%)"


def machine_line(meta: dict[str, Any]) -> str:
    m = meta["machine"]
    gpu = m.get("gpu") or "no GPU"
    mem = f", {m['memory_gib']} GiB" if m.get("memory_gib") else ""
    v = m.get("versions", {})
    libs = ", ".join(f"{k} {v[k]}" for k in ("torch", "openmm", "tblite") if k in v)
    return (f"{meta['date']} on {m['cpu']} ({m['cores']} cores{mem}, {gpu}; {libs}), {meta['threads']} thread(s) "
            "for every method")


def wall_line(meta: dict[str, Any]) -> str:
    how = {True: "from scratch", False: "reusing cached runs and models"}.get(meta.get("from_scratch"), "")
    return f"bench wall time {meta['wall_s'] / 60:.1f} min" + (f", {how}" if how else "")


def cost_table(records: list[dict[str, Any]]) -> list[str]:
    head = ("| molecule | method | force calls/ps | wall s/ps: median (min, spread) | ms/force call | model ms/jump "
            "| calls ÷ vs ref | wall speed-up vs ref | calls ÷ vs best plain | wall speed-up vs best plain "
            "| NaN frames | fallbacks/jumps | acceptance | τ_int U / slowest dihedral fs | ESS/force call U (vs best plain) "
            "| ESS/force call dihedral (vs best plain) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        fb = f"{r['fallbacks']}/{r['jumps_attempted']}" if r["kind"] == "hybrid" else "–"
        acc = fmt(r.get("acceptance"), 3) if r["kind"] == "exact" else "–"
        tau = " / ".join(fmt(r.get(f"tau_int_{n}_fs"), 3) + ("" if r.get(f"tau_int_{n}_reliable") else "*")
                         for n in ("U", "dihedral"))
        ess = f"{fmt(r.get('ess_per_force_call_U'), 3)} ({_x(r.get('ess_gain_vs_best_plain'))})"
        ess_d = f"{fmt(r.get('ess_per_force_call_dihedral'), 3)} ({_x(r.get('ess_gain_dihedral_vs_best_plain'))})"
        lines.append(f"| {r['molecule']} | {r['method']} | {fmt(r['force_calls_per_ps'], 4)} | {_wall(r)} "
                     f"| {fmt(r['force_ms_per_call'], 3)} | {fmt(r['model_ms_per_jump'], 3)} "
                     f"| {_x(r['force_call_reduction'])} | {_x(r['wall_speedup'])} "
                     f"| {_x(r['force_call_reduction_vs_best_plain'])} | {_x(r['wall_speedup_vs_best_plain'])} "
                     f"| {r['nan_frames']} | {fb} | {acc} | {tau} | {ess} | {ess_d} |")
    return lines + ["", "\\* run shorter than 50 τ_int: the τ is a low, noisy estimate. In NVT, U's τ_int is set mostly "
                    "by the thermostat's friction (the hybrid's bath is stronger than the plain methods'); the slowest "
                    "dihedral's measures conformational sampling."]


def fidelity_table(records: list[dict[str, Any]]) -> list[str]:
    head = ("| molecule | method | bond W1 Å | mean bond err Å | angle W1 ° | dihedral W1 ° | RDF L1 | VACF L2 "
            "| max structure ratio | faithful | T mean ± std K | T per element K | max element T dev | NVE drift kJ/mol/ps/atom |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        drift = fmt(r["nve_drift_kj_mol_ps_per_atom"], 2) + ("" if r["nve_stable"] else " (blew up)")
        lines.append(f"| {r['molecule']} | {r['method']} | {_dist(r, 'bond_w1_A')} | {_dist(r, 'mean_bond_err_A')} "
                     f"| {_dist(r, 'angle_w1_deg')} | {_dist(r, 'dihedral_w1_deg')} | {_dist(r, 'rdf_l1')} "
                     f"| {_dist(r, 'vacf_l2')} | {fmt(r['max_structure_ratio'], 3)} | {'yes' if r['faithful'] else 'no'} "
                     f"| {fmt(r['temperature_mean_K'], 4)} ± {fmt(r['temperature_std_K'], 3)} "
                     f"| {_per_element(r.get('temperature_per_element_K'))} "
                     f"| {_pct(r.get('element_T_max_dev'))} ({_pct(r.get('element_T_max_dev_replica'))}) "
                     f"| {drift} |")
    return lines


def _duration(ps: float | None) -> str:
    """Simulated time in ps, or ns / µs where large; n/a when None."""
    if ps is None:
        return "n/a"
    for scale, unit in ((1e6, "µs"), (1e3, "ns")):
        if ps >= scale:
            return f"{ps / scale:.3g} {unit}"
    return f"{ps:.3g} ps"


def break_even_section(records: list[dict[str, Any]]) -> list[str]:
    """### Break-even: per hybrid row, its model's cost (training data + training), the saving
    per simulated ps vs the best faithful plain method, and when the model has paid for itself."""
    rows = [r for r in records if r["kind"] != "plain" and r.get("model_source")]
    if not rows:
        return []
    head = ("| molecule | method | model | data force calls | data + training wall s | vs (best faithful plain) "
            "| saving calls/ps | saving wall s/ps | break-even: calls | break-even: wall | hybrid faithful |")
    lines = ["### Break-even", "",
             "Cost of each model (its shipped card, or this run's training runs and training; the data of a mode is "
             "shared by its models and counted whole on each line), the saving per simulated ps against the best "
             "faithful plain method of the molecule, and the simulated time after which the model has paid for "
             "itself (cost / saving; n/a where it saves nothing or no plain method is faithful). A saving by an "
             "unfaithful hybrid is no saving: see the last column.", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['molecule']} | {r['method']} | {r['model_source']} | {fmt(r['model_cost_force_calls'], 4)} "
                     f"| {fmt(r['model_cost_wall_s'], 4)} | {r.get('best_plain_method') or 'none'} "
                     f"| {fmt(r['saving_force_calls_per_ps'], 4)} | {fmt(r['saving_wall_s_per_ps'], 3)} "
                     f"| {_duration(r['break_even_ps_force_calls'])} | {_duration(r['break_even_ps_wall'])} "
                     f"| {'yes' if r['faithful'] else 'no'} |")
    return lines + [""]


def reference_check_section(checks: dict[str, list[dict[str, Any]]] | None) -> list[str]:
    """### Reference check: each reference replica's mean temperature (±5 % of the target) and
    the KS p-value of its kinetic energies against Gamma(n_dof/2, kT); a WARNING line per miss."""
    if not checks:
        return []
    head = ("| molecule | replica | mean T K | vs target | σ of the mean K | n_dof | KS p (Gamma law) "
            "| thinned frames (stride) | ok |")
    lines = ["### Reference check", "",
             "Every reference replica: mean kinetic temperature within ±5 % of the target, and its kinetic energies "
             "against the canonical K ~ Gamma(n_dof/2, kT) (Kolmogorov-Smirnov on frames thinned to ~one per "
             "autocorrelation time; p < 0.01 = mismatch). σ of the mean = T sqrt(2 / (n_dof x thinned frames)): a miss "
             "within ~2σ says the replica is too short to judge, not that the thermostat is wrong.", "", head, "|" + "---|" * (head.count("|") - 1)]
    warnings = []
    for mol, reps in checks.items():
        for r in reps:
            ok = r["temperature_ok"] and r["gamma_ok"]
            lines.append(f"| {mol} | {r['replica']} | {fmt(r['mean_temperature_K'], 4)} "
                         f"| {100 * r['temperature_dev']:+.1f}% | {fmt(r.get('mean_temperature_sigma_K'), 2)} "
                         f"| {r['n_dof']} | {fmt(r['ks_p'], 2)} "
                         f"| {r['n_samples']} ({r['stride_frames']}) | {'yes' if ok else '**no**'} |")
            if r.get("warning"):
                warnings.append(f"**WARNING** {mol} replica {r['replica']}: {r['warning']}.")
    return lines + [""] + ([*warnings, ""] if warnings else [])


def heldout_one_jump_section(res: dict[str, dict[str, Any]] | None) -> list[str]:
    """Per molecule and model: one-jump bond / angle RMSE beside "no move" and their ratio (skill)
    on the molecule's own run, which the models never trained on; [] when not measured."""
    if not res:
        return []
    out = ["### One jump on molecules the models never saw", "",
           "Every k-window of each molecule's own run (not trained on); skill = model / no move (goal <= 0.3).", "",
           "| molecule | model | bond RMSE Å (no move, ballistic) | bond skill | heavy-atom bond skill "
           "| angle RMSE ° (no move) | angle skill |",
           "|---|---|---|---|---|---|---|"]

    def skill(m: dict, n: dict, key: str) -> float | None:
        return m[key] / n[key] if m.get(key) is not None and n.get(key) else None

    for mol, by_k in res.items():
        for k, r in by_k.items():
            m, n, b = r.get("model", {}), r.get("no_move", {}), r.get("ballistic", {})
            out.append(f"| {mol} | {k} | {fmt(m.get('bond_rmse_A'), 3)} ({fmt(n.get('bond_rmse_A'), 3)}, "
                       f"{fmt(b.get('bond_rmse_A'), 3)}) | {fmt(skill(m, n, 'bond_rmse_A'), 2)} | "
                       f"{fmt(skill(m, n, 'bond_rmse_heavy_A'), 2)} | {fmt(m.get('angle_rmse_deg'), 3)} "
                       f"({fmt(n.get('angle_rmse_deg'), 3)}) | {fmt(skill(m, n, 'angle_rmse_deg'), 2)} |")
    return out + [""]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def markdown(result: dict[str, Any]) -> str:
    meta, recs = result["meta"], result["records"]
    out = ["# md-kstep benchmark", "",
           f"Measured {machine_line(meta)}; {wall_line(meta)}. Timings: median of "
           f"{meta['timing_repeats']} interleaved repeats per method after one warm-up (min and spread = "
           "(max - min) / median beside it). Force calls are counted (engine counter; OpenMM: integrator steps, "
           "one force evaluation each); calls/ps counts production only, on both sides: the learned rows' one "
           "start-up call per replica (F(x0)) is left out like the plain runs' (it is in the JSON's "
           "force_calls_setup).", "",
           f"Fidelity: each distance vs reference replica 0 at the two runs' common frame interval, with its "
           f"ratio to the largest distance between the {meta['config'].get('ref_replicas', 2)} reference replicas "
           f"(the floor) in brackets. *Faithful* = bond "
           f"W1, mean bond error, angle W1, fast-dihedral W1 and RDF L1 all within {meta['fidelity_ratio_ok']:g}x "
           "the floor, and every element's mean temperature within ±10 % of reference replica 0's (equipartition; "
           "or within that factor of the replicas' own largest deviation, in brackets, where it is larger); "
           "the VACF is shown but does not decide (HMR changes the dynamics on purpose). The reference "
           "row compares replica 1 with replica 0 (with two replicas: the floor itself). \"Best plain\" = the faithful plain "
           "method with the fewest force calls per ps. NVE drift: a separate NVE segment from the same start "
           "(hybrid: energy filter off, so the drift is the integrator's own).", ""]
    for mode, mmeta in meta["modes"].items():
        rows = [r for r in recs if r["mode"] == mode]
        s = mmeta["settings"]
        out += [f"## {MODE_TITLES.get(mode, mode)}", "",
                f"Molecules: {', '.join(mmeta['molecules'])}; {s['time_ps']:g} ps NVT production per method "
                + (f"({', '.join(f'{m}: {t:g} ps' for m, t in s['time_ps_by_mol'].items())}) "
                   if s.get("time_ps_by_mol") else "") +
                f"(and per reference replica), NVE {s['nve_ps']:g} ps, timing {s['timing_ps']:g} ps x "
                f"{meta['timing_repeats']}; mode wall time {mmeta['wall_s'] / 60:.1f} min.", ""]
        if "verlet_scan" in mmeta:
            scan = "; ".join(f"{mol}: {v['largest_stable_dt_fs']} fs" for mol, v in mmeta["verlet_scan"].items())
            out += [f"Largest stable velocity-Verlet step (|NVE drift| ≤ "
                    f"{next(iter(mmeta['verlet_scan'].values()))['max_drift_per_atom_kj_mol_ps']:g} kJ/mol/ps per atom "
                    f"over {next(iter(mmeta['verlet_scan'].values()))['scan_ps']:g} ps): {scan}.", ""]
        models = [f"k={k[1:]}: bond {fmt(v['one_jump_test'].get('bond_rmse_A'), 3)} Å / angle "
                  f"{fmt(v['one_jump_test'].get('angle_rmse_deg'), 3)}° (no move "
                  f"{fmt(v['one_jump_test'].get('no_move_bond_rmse_A'), 3)} Å / "
                  f"{fmt(v['one_jump_test'].get('no_move_angle_rmse_deg'), 3)}°)"
                  for k, v in mmeta["models"].items() if v.get("one_jump_test")]
        if models:
            out += ["One-jump test RMSE of the models: " + "; ".join(models) + ".", ""]
        shear = [f"{name}: median |dH| {fmt((v['teacher_forced'].get('before') or {}).get('median_abs_dH_kJ_mol'), 3)} "
                 f"-> {fmt((v['teacher_forced'].get('after') or {}).get('median_abs_dH_kJ_mol'), 3)} kJ/mol"
                 for name, v in mmeta["models"].items() if v.get("teacher_forced")]
        if shear:
            out += ["Exact-mode shear models, teacher-forced on held-out windows (untrained = velocity Verlet at the "
                    "stride -> trained): " + "; ".join(shear) + ". Exact rows sample exp(-H/kT) exactly (Metropolis "
                    "test on the one force call; a rejection flips v); mvv rows are the same sampler with delta = 0 "
                    "(Metropolized velocity Verlet).", ""]
        out += heldout_one_jump_section(mmeta.get("heldout_one_jump"))
        out += ["### Cost", ""] + cost_table(rows) + ["", "### Fidelity", ""] + fidelity_table(rows) + [""]
        ood = [f"**WARNING** {r['molecule']} {r['method']}: the model is outside its training domain "
               f"({'; '.join(r['out_of_domain'])})." for r in rows if r.get("out_of_domain")]
        out += [*ood, ""] if ood else []
        out += break_even_section(rows)
        out += reference_check_section(mmeta.get("reference_check"))
    return "\n".join(out)


def readme_table(result: dict[str, Any]) -> str:
    """The compact table for the README (between the bench markers)."""
    meta = result["meta"]
    head = ("| mode | molecule | method | force calls/ps | wall s/ps | calls ÷ vs best plain | wall speed-up vs best "
            "plain | max structure ratio | faithful |")
    lines = [f"Measured {machine_line(meta)} with `make bench` ({wall_line(meta)}); "
             "full tables in `outputs/bench/bench.md`.", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in result["records"]:
        lines.append(f"| {r['mode']} | {r['molecule']} | {r['method']} | {fmt(r['force_calls_per_ps'], 4)} "
                     f"| {fmt(r['wall_s_per_ps'], 3)} | {_x(r['force_call_reduction_vs_best_plain'])} "
                     f"| {_x(r['wall_speedup_vs_best_plain'])} | {fmt(r['max_structure_ratio'], 3)} "
                     f"| {'yes' if r['faithful'] else 'no'} |")
    return "\n".join(lines)


def update_readme(readme: Path, result: dict[str, Any]) -> None:
    """Replace the text between the bench markers of ``readme`` with :func:`readme_table`."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise MdkstepError(f"{readme}: no '{README_START}' ... '{README_END}' markers to put the results between")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    atomic_write_text(readme, f"{head}{README_START}\n{readme_table(result)}\n{README_END}{tail}")


def write_outputs(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """bench.json, bench.md and pareto.png in ``out_dir`` (each written atomically)."""

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "bench.json", "md": out_dir / "bench.md", "pareto": out_dir / "pareto.png"}
    atomic_write_json(paths["json"], result)
    atomic_write_text(paths["md"], markdown(result))
    panels: dict[str, list[dict[str, Any]]] = {}
    for r in result["records"]:
        panels.setdefault(f"{r['mode'].upper()} {r['molecule']}", []).append(r)
    pareto_grid(panels, paths["pareto"], result["meta"]["fidelity_ratio_ok"])
    return paths
