"""Does the model know this molecule? Signs, read off a hybrid run's statistics, that a jump
model is outside its training domain, and the one WARNING line that says so (issue 24, Build 5).

Thresholds come from measured runs (docs/studies/generalization.md): in distribution the
shipped models run with 0-1 % retries, no fallback and every element within 10 % of the
target; on molecules the two-molecule MM models never saw, retries reached 43 % of jumps,
fallbacks 0.3-5 % and O/N atoms ran 14-45 % hot. A model outside its domain still gives
correct statistics only as far as the corrector and guard repair it: the warning names the
fine-tuning command (``mdkstep-adapt``) that brings the molecule into the domain.

The energy filter's mean |s^2 - 1| (``filter_ke_change_mean`` in the run statistics) is reported
but sets no warning: measured 2026-12-07 it does not separate known from unknown molecules (QM
k = 16 foundation model: 0.040-0.046 on its training molecules, 0.029-0.058 on five held-out ones;
MM k = 8: 0.19-0.20 in distribution, 0.16-0.32 held out).
Units: K; rates are fractions of attempted jumps.
"""
from __future__ import annotations

import shlex
from typing import Any

#: more retries than this fraction of attempted jumps: the jumps often fail the guard
RETRY_WARN = 0.05
#: more fallbacks (cycles of plain physics) than this fraction
FALLBACK_WARN = 0.01
#: an element's kinetic temperature further than this from the target (the jumps heat or cool it) ...
ELEMENT_T_WARN = 0.15
#: ... judged only on runs at least this long (ps, all replicas): shorter ones are too noisy
ELEMENT_T_MIN_PS = 2.0


def domain_signs(stats: dict[str, Any], target_K: float | None) -> list[str]:
    """The out-of-domain signs of a run's statistics (``run_hybrid``'s or ``HybridMD.stats()``'s),
    each as a short phrase; [] when none."""
    attempted = stats.get("jumps_attempted") or stats.get("jumps_accepted") or 0
    signs = []
    retry = stats.get("retry_rate", (stats.get("retries") or 0) / attempted if attempted else 0.0)
    fallback = stats.get("fallback_rate", (stats.get("fallbacks") or 0) / attempted if attempted else 0.0)
    if retry > RETRY_WARN:
        signs.append(f"retries on {100 * retry:.0f}% of jumps (> {100 * RETRY_WARN:.0f}%)")
    if fallback > FALLBACK_WARN:
        signs.append(f"fallbacks on {100 * fallback:.1f}% of jumps (> {100 * FALLBACK_WARN:.0f}%)")
    sim_ps = stats.get("simulated_ps_total") or stats.get("simulated_ps") or 0.0
    per = stats.get("temperature_per_element_K") or {}
    if target_K and sim_ps >= ELEMENT_T_MIN_PS and per:
        el, t = max(per.items(), key=lambda kv: abs(kv[1] / target_K - 1.0))
        if abs(t / target_K - 1.0) > ELEMENT_T_WARN:
            signs.append(f"{el} atoms at {t:.0f} K ({100 * (t / target_K - 1.0):+.0f}% off {target_K:g} K)")
    return signs


def adapt_command(checkpoint: Any, smiles: str | None) -> str:
    """The fine-tuning command for this molecule (``mdkstep-adapt``)."""
    mol = f"--smiles {shlex.quote(smiles)}" if smiles else "--smiles '<your molecule>'"
    return f"mdkstep-adapt --checkpoint {checkpoint} {mol}"


def domain_warning(stats: dict[str, Any], target_K: float | None, checkpoint: Any,
                   smiles: str | None = None) -> str | None:
    """One WARNING line when the run shows out-of-domain signs, with the fine-tuning command;
    None otherwise."""
    signs = domain_signs(stats, target_K)
    if not signs:
        return None
    reasons = ", ".join(f"{k} {v}" for k, v in sorted((stats.get("reject_reasons") or stats.get("rejects") or {}).items(),
                                                       key=lambda kv: -kv[1]) if v)
    return (f"WARNING: the model is outside its training domain for this molecule ({'; '.join(signs)}"
            f"{'; rejects: ' + reasons if reasons else ''}); fine-tune it on this molecule: "
            f"{adapt_command(checkpoint, smiles)}")
