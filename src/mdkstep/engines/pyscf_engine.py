"""PySCF force engine: Hartree-Fock or Kohn-Sham DFT, any basis, on CPU or (GPU4PySCF) GPU.

PySCF works in Bohr and Hartree; this engine converts to nm and kJ/mol. Calls go through a
PySCF gradient *scanner*, which starts each SCF from the previous density matrix.
GPU4PySCF is used when ``use_gpu`` is "auto" and both the package and a CUDA device are
present (or when ``use_gpu`` is True, which fails loudly otherwise); one log line says which.
"""
from __future__ import annotations

import numpy as np

from mdkstep.engines.base import ForceEngine
from mdkstep.engines.units import HARTREE_PER_BOHR_TO_KJ_MOL_NM, HARTREE_TO_KJ_MOL, nm_to_bohr
from mdkstep.utils import LOG, MdkstepError

HF_METHODS = ("RHF", "UHF", "ROHF")
KS_METHODS = ("RKS", "UKS", "ROKS")
INSTALL_PYSCF = "pip install pyscf"
INSTALL_GPU = "pip install gpu4pyscf-cuda12x cupy-cuda12x"


def gpu_status() -> tuple[bool, str]:
    """(True, device description) when GPU4PySCF can run here, else (False, the reason)."""
    try:
        import cupy
    except ImportError:
        return False, f"cupy is not installed; for GPU runs: {INSTALL_GPU}"
    except Exception as e:  # broken CUDA libraries raise all sorts of errors at import
        return False, f"cupy failed to import ({str(e).splitlines()[0]})"
    try:
        n = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as e:
        return False, f"no CUDA GPU visible ({str(e).splitlines()[0] or type(e).__name__})"
    if n < 1:
        return False, "no CUDA GPU visible"
    try:
        import gpu4pyscf  # noqa: F401
    except ImportError:
        return False, f"gpu4pyscf is not installed; for GPU runs: {INSTALL_GPU}"
    except Exception as e:
        return False, f"gpu4pyscf failed to import ({str(e).splitlines()[0]})"
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    return True, name.decode() if isinstance(name, bytes) else str(name)


def resolve_method(method: str, spin: int, xc: str | None) -> tuple[str, str | None]:
    """(PySCF class name, xc functional or None). 'HF' -> RHF/UHF by spin; a bare functional
    name (e.g. 'B3LYP') means RKS/UKS with that functional."""
    m = str(method).strip().upper()
    if m == "HF":
        m = "RHF" if spin == 0 else "UHF"
    if m in ("DFT", "KS"):
        m = "RKS" if spin == 0 else "UKS"
    if m in HF_METHODS:
        if xc:
            raise MdkstepError(f"pyscf engine: method {m} takes no xc functional (got xc={xc!r}); use RKS/UKS")
        return m, None
    if m in KS_METHODS:
        if not xc:
            raise MdkstepError(f"pyscf engine: method {m} needs an xc functional (e.g. xc: b3lyp)")
        return m, xc
    if xc:
        raise MdkstepError(f"pyscf engine: unknown method {method!r} (use RHF, UHF, ROHF, RKS, UKS, ROKS)")
    return ("RKS" if spin == 0 else "UKS"), str(method)  # method given as a functional name


class PySCFEngine(ForceEngine):
    """SCF energy and analytic forces for one molecule.

    Args:
        atomic_numbers: (n_atoms,) elements. masses: (n_atoms,) amu.
        method: RHF | UHF | ROHF | RKS | UKS | ROKS | HF | a functional name (then RKS/UKS).
        basis: any PySCF basis name ('sto-3g', '6-31g*', 'def2-svp', ...).
        charge: net charge, e. spin: 2S = number of unpaired electrons (PySCF convention).
        xc: exchange-correlation functional for the KS methods.
        omp_num_threads: PySCF OpenMP threads (None: leave as is).
        max_memory_mb: PySCF memory limit, MB (None: PySCF default).
        use_gpu: "auto" (GPU4PySCF when importable and a CUDA GPU is present), True, False.
        conv_tol: SCF energy convergence, Hartree.
    """

    name = "pyscf"

    def __init__(self, atomic_numbers, masses, method: str = "RHF", basis: str = "sto-3g", charge: int = 0,
                 spin: int = 0, xc: str | None = None, omp_num_threads: int | None = None,
                 max_memory_mb: int | None = None, use_gpu: bool | str = "auto", conv_tol: float = 1e-9):
        super().__init__(masses, atomic_numbers)
        try:
            import pyscf  # noqa: F401
        except ImportError:
            raise MdkstepError(f"pyscf engine needs PySCF: {INSTALL_PYSCF}") from None
        if use_gpu not in ("auto", True, False):
            raise MdkstepError(f"pyscf engine: use_gpu must be auto, true or false, got {use_gpu!r}")
        self.scf_class, self.xc = resolve_method(method, int(spin), xc)
        self.basis = basis
        self.charge = int(charge)
        self.spin = int(spin)
        self.conv_tol = float(conv_tol)
        self.omp_num_threads = omp_num_threads
        self.max_memory_mb = max_memory_mb
        self.scf_restarts = 0
        if omp_num_threads:
            from pyscf import lib

            lib.num_threads(int(omp_num_threads))
        self.use_gpu, self.device_note = self._choose_device(use_gpu)
        self._mol = None
        self._scanner = None

    @property
    def method(self) -> str:
        """Method label, e.g. 'RHF/sto-3g' or 'RKS-b3lyp/6-31g*'."""
        core = self.scf_class if self.xc is None else f"{self.scf_class}-{self.xc}"
        return f"{core}/{self.basis}"

    def _choose_device(self, use_gpu: bool | str) -> tuple[bool, str]:
        if use_gpu is False:
            LOG.info("pyscf engine: CPU PySCF (use_gpu is false)")
            return False, "cpu: use_gpu false"
        ok, why = gpu_status()
        if ok:
            LOG.info("pyscf engine: GPU4PySCF on %s", why)
            return True, f"gpu: {why}"
        if use_gpu is True:
            raise MdkstepError(f"pyscf engine: use_gpu is true but GPU4PySCF cannot run: {why}")
        LOG.info("pyscf engine: CPU PySCF fallback (GPU4PySCF not used: %s)", why)
        return False, f"cpu: {why}"

    def _build(self, x_bohr: np.ndarray) -> None:
        from pyscf import dft, gto, scf

        try:
            mol = gto.M(atom=[(int(z), tuple(p)) for z, p in zip(self.atomic_numbers, x_bohr)], unit="Bohr",
                        basis=self.basis, charge=self.charge, spin=self.spin, verbose=0)
        except (RuntimeError, KeyError, ValueError) as e:
            raise MdkstepError(f"pyscf engine: cannot build the molecule ({str(e).splitlines()[0]})") from None
        if self.max_memory_mb:
            mol.max_memory = int(self.max_memory_mb)
        mf = getattr(dft, self.scf_class)(mol, xc=self.xc) if self.xc else getattr(scf, self.scf_class)(mol)
        mf.conv_tol = self.conv_tol
        if self.use_gpu:
            mf = mf.to_gpu()
        self._mol = mol
        self._scanner = mf.nuc_grad_method().as_scanner()

    def _run(self, x_bohr: np.ndarray) -> tuple[float, np.ndarray]:
        if self._scanner is None:
            self._build(x_bohr)
            mol = self._mol
        else:
            mol = self._mol.set_geom_(x_bohr, unit="Bohr", inplace=False)
        e, g = self._scanner(mol)
        if not self._scanner.converged:
            raise RuntimeError("SCF did not converge")
        g = g.get() if hasattr(g, "get") else g  # cupy -> numpy on the GPU path
        return float(e), np.asarray(g, dtype=float)

    def _compute(self, positions_nm: np.ndarray) -> tuple[float, np.ndarray]:
        x_bohr = nm_to_bohr(positions_nm)
        try:
            e_h, g = self._run(x_bohr)
        except MdkstepError:
            raise
        except Exception as e:  # retry once from a fresh (minao) guess
            LOG.warning("pyscf %s: %s; retrying from a fresh guess", self.method, str(e).splitlines()[0])
            self.scf_restarts += 1
            self._scanner = None
            try:
                e_h, g = self._run(x_bohr)
            except Exception as e2:
                raise MdkstepError(f"pyscf {self.method} failed: {str(e2).splitlines()[0]}") from None
        return e_h * HARTREE_TO_KJ_MOL, -g * HARTREE_PER_BOHR_TO_KJ_MOL_NM

    def describe(self) -> dict:
        return {"engine": self.name, "method": self.method, "scf": self.scf_class, "xc": self.xc,
                "basis": self.basis, "charge": self.charge, "spin": self.spin, "device": self.device_note,
                "conv_tol_hartree": self.conv_tol, "scf_restarts": self.scf_restarts}
