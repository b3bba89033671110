"""GPU paths, checked in a few minutes on a GPU machine (issue 26, Build 6): one JSON line per
check and a summary table. Checks that need a GPU report "skipped: <reason>" without one, so the
script itself is exercised on CPU machines too (``tools/gpu_check.sh``).

1. OpenMM CUDA vs CPU: forces of aspirin (OpenFF) on both platforms, max relative difference
   (goal <= 1e-4 of the largest force).
2. GPU4PySCF vs PySCF: RHF/6-31G gradient of water, max |difference| in Eh/Bohr (goal <= 1e-6).
3. DDP: ``torchrun --nproc_per_node=2`` training for 50 steps vs one process on the same data;
   final train loss within 5 % (data order differs between the two; the check is that DDP trains).
4. Training throughput: optimizer steps/s of the QM k = 16 setting on CUDA vs CPU (one thread).
5. 06b with GPU4PySCF: 0.05 ps of the hybrid on water (RHF/sto-3g) with models/qm_k16.pt
   through PySCF on the GPU; finishes with no NaN frame.

    bash tools/gpu_check.sh [OUT_DIR]        # writes OUT_DIR/gpu_check.json (default outputs/gpu_check)

Units: forces kJ/mol/nm (OpenMM), Eh/Bohr (PySCF), s.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def cuda_reason() -> str | None:
    """None when torch sees a CUDA device, else why not."""
    import torch

    return None if torch.cuda.is_available() else "no CUDA device visible to torch"


def check_openmm(out: Path) -> dict:
    import openmm

    from mdkstep.molecule.prep import PrepConfig, prepare_from_smiles, read_smi_strict
    from mdkstep.molecule.system import from_molecule_dir

    names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    if "CUDA" not in names:
        return {"status": f"skipped: OpenMM has no CUDA platform (have {names})"}
    smi = out / "aspirin.smi"
    smi.write_text("CC(=O)Oc1ccccc1C(=O)O aspirin\n")
    raw = out / "raw"
    if not (raw / "aspirin" / "topology.json").is_file():
        prepare_from_smiles(read_smi_strict(smi)[0], raw, PrepConfig())
    mol = from_molecule_dir(raw / "aspirin")
    forces = {}
    for plat in ("CPU", "CUDA"):
        system = mol.openmm_system()
        ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(plat))
        ctx.setPositions(mol.positions_nm)
        forces[plat] = ctx.getState(getForces=True).getForces(asNumpy=True)._value
    rel = float(np.max(np.abs(forces["CUDA"] - forces["CPU"])) / np.max(np.abs(forces["CPU"])))
    return {"status": "pass" if rel <= 1e-4 else "FAIL", "max_rel_force_diff": rel, "goal": 1e-4}


def check_gpu4pyscf() -> dict:
    from mdkstep.engines.pyscf_engine import gpu_status

    ok, why = gpu_status()
    if not ok:
        return {"status": f"skipped: {why}"}
    from pyscf import gto, scf

    mol = gto.M(atom="O 0 0 0.117; H 0 0.757 -0.467; H 0 -0.757 -0.467", basis="6-31g", verbose=0)
    t0 = time.perf_counter()
    g_cpu = scf.RHF(mol).run(conv_tol=1e-11).nuc_grad_method().kernel()
    t_cpu = time.perf_counter() - t0
    from gpu4pyscf import scf as gscf

    t0 = time.perf_counter()
    g_gpu = gscf.RHF(mol).run(conv_tol=1e-11).nuc_grad_method().kernel()
    t_gpu = time.perf_counter() - t0
    diff = float(np.max(np.abs(np.asarray(g_gpu.get() if hasattr(g_gpu, "get") else g_gpu) - g_cpu)))
    return {"status": "pass" if diff <= 1e-6 else "FAIL", "max_grad_diff_Eh_bohr": diff, "goal": 1e-6,
            "cpu_s": t_cpu, "gpu_s": t_gpu}


def tiny_dataset(out: Path) -> tuple[Path, Path, Path]:
    """A GFN2-xTB ethanol trajectory (0.3 ps) and its k = 16 dataset and splits (cached)."""
    ds, splits = out / "data" / "dataset_k16.npz", out / "splits"
    if ds.is_file():
        return ds, splits / "train.json", splits / "val.json"
    smi = out / "ethanol.smi"
    smi.write_text("CCO ethanol\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([PY, "-m", "mdkstep.cli.qm", "--smiles-file", str(smi), "--out", str(out / "md"), "--time-ps", "0.3",
                    "--no-progress"], check=True, env=env, cwd=ROOT)
    subprocess.run([PY, "-m", "mdkstep.cli.dataset", "--md-root", str(out / "md"), "--out-root", str(out / "data"),
                    "--splits-dir", str(splits), "--ks", "16", "--split", "time"], check=True, env=env, cwd=ROOT)
    return ds, splits / "train.json", splits / "val.json"


def train_cmd(ds: Path, tr: Path, va: Path, out: Path, device: str, steps: int) -> list[str]:
    return ["-m", "mdkstep.cli.train", "--dataset", str(ds), "--splits", str(tr), str(va), "--out", str(out),
            "--train-config", str(ROOT / "configs" / "train_qm.yaml"),
            "--model-config", str(ROOT / "configs" / "model_qm.yaml"), "--max-steps", str(steps),
            "--set", "eval_every=0", "--set", "batch_size=32", "--device", device, "--overwrite", "--threads", "1"]


def final_loss(run: Path) -> float:
    rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()]
    col = rows[0].index("train_loss")
    return float([r for r in rows[1:] if r[col]][-1][col])


def check_ddp(out: Path) -> dict:
    ds, tr, va = tiny_dataset(out)
    device = "cuda" if cuda_reason() is None else "cpu"
    n = "2" if device == "cpu" or int(os.environ.get("GPU_COUNT", "1")) < 2 else os.environ["GPU_COUNT"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([PY, *train_cmd(ds, tr, va, out / "single", device, 50)], env=env, cwd=ROOT,
                            capture_output=True, text=True)
    ddp = subprocess.run([PY, "-m", "torch.distributed.run", f"--nproc_per_node={n}",
                          *train_cmd(ds, tr, va, out / "ddp", device, 50)], env=env, cwd=ROOT, capture_output=True, text=True)
    if single.returncode or ddp.returncode:
        return {"status": "FAIL", "single_rc": single.returncode, "ddp_rc": ddp.returncode,
                "stderr_tail": (ddp.stderr or single.stderr)[-400:]}
    a, b = final_loss(out / "single"), final_loss(out / "ddp")
    rel = abs(a - b) / abs(a)
    return {"status": "pass" if rel <= 0.05 else "FAIL", "device": device, "processes": int(n), "loss_single": a,
            "loss_ddp": b, "rel_diff": rel, "goal": 0.05}


def check_throughput(out: Path) -> dict:
    ds, tr, va = tiny_dataset(out)
    res = {}
    for device in ("cpu", "cuda"):
        if device == "cuda" and cuda_reason():
            res["cuda"] = f"skipped: {cuda_reason()}"
            continue
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        r = subprocess.run([PY, *train_cmd(ds, tr, va, out / f"speed_{device}", device, 200)], env=env, cwd=ROOT,
                           capture_output=True, text=True)
        res[device] = 200 / (time.perf_counter() - t0) if r.returncode == 0 else f"FAIL rc {r.returncode}"
    ok = all(isinstance(v, float) for v in res.values())
    return {"status": "pass" if ok else "partial", "steps_per_s": res,
            "gpu_over_cpu": res["cuda"] / res["cpu"] if ok else None}


def check_06b_gpu4pyscf(out: Path) -> dict:
    from mdkstep.engines.pyscf_engine import gpu_status

    ok, why = gpu_status()
    if not ok:
        return {"status": f"skipped: {why}"}
    run = out / "hybrid_pyscf" / "water.npz"
    r = subprocess.run([PY, "-m", "mdkstep.cli.hybrid_qm", "--smiles", "O", "--name", "water",
                        "--qm-config", str(ROOT / "configs" / "qm_pyscf.yaml"), "--qm-set", "use_gpu=true",
                        "--checkpoint", str(ROOT / "models" / "qm_k16.pt"), "--out", str(run), "--time-ps", "0.05",
                        "--no-progress", "--overwrite"], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        return {"status": "FAIL", "stderr_tail": r.stderr[-400:]}
    st = json.loads(run.with_suffix(".stats.json").read_text())
    return {"status": "pass" if st["nan_frames"] == 0 else "FAIL", "force_calls_per_ps": st["force_calls_per_ps"],
            "wall_s_per_ps": st["wall_seconds_per_ps"], "force_ms_per_call": st["force_ms_per_call"]}


CHECKS = {"openmm_cuda": check_openmm, "gpu4pyscf_gradient": lambda out: check_gpu4pyscf(),
          "ddp_50_steps": check_ddp, "train_throughput": check_throughput, "hybrid_06b_gpu4pyscf": check_06b_gpu4pyscf}


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else ROOT / "outputs" / "gpu_check"
    out.mkdir(parents=True, exist_ok=True)
    only = argv[1:] or list(CHECKS)
    results = {}
    for name in only:
        t0 = time.perf_counter()
        try:
            res = CHECKS[name](out)
        except Exception as e:  # a check that crashes is reported, the others still run
            res = {"status": "FAIL", "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        results[name] = res
        print(json.dumps({name: res}), flush=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1))
    print("| check | status | wall s |\n|---|---|---|")
    for name, res in results.items():
        print(f"| {name} | {res['status']} | {res['wall_s']} |")
    return 1 if any(r["status"] == "FAIL" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
