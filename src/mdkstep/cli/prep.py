"""Stage 00: prepare molecules for MD.

From a .smi file (one "SMILES name" per line; blank lines and # comments allowed), each
molecule gets an RDKit ETKDG conformer (seeded), OpenFF parameters (offxml and charge model
from --config), an OpenMM minimisation, and a folder <out-dir>/<name>/ with molecule.pdb,
system.xml (serialized OpenMM System, no constraints), molecule.sdf and topology.json
(atomic numbers, masses, net charge, bonds/angles/proper dihedrals).

Bring your own system instead with --pdb + --xml or --prmtop + --inpcrd (and --name).

A molecule that fails (bad SMILES, an element the force field lacks, a duplicate name) gets
a one-line error naming its line; the others are still written; the exit status is 1 if any
failed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mdkstep.cli.common import add_log_level, make_parser
from mdkstep.config import load_config, run_cli
from mdkstep.molecule.prep import PrepConfig, prepare_from_files, prepare_from_smiles, read_smi
from mdkstep.utils import MdkstepError, check_writable, setup_logging

EXAMPLE = """Example (the molecules of data/quick.smi into outputs/raw/<name>/, conformer seed 1):
  mdkstep-prep --smiles data/quick.smi --out-dir outputs/raw --config configs/prep.yaml --set seed=1
  python src/00_prep_mols.py --smiles data/quick.smi --out-dir outputs/raw   # the same as a script, seed 42
Units: minimisation tolerance kJ/(mol nm); outputs in nm (molecule.pdb: Angstrom), amu, elementary charges.
"""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, EXAMPLE)
    p.add_argument("--smiles", type=Path, help="input .smi file (SMILES and name per line)")
    p.add_argument("--out-dir", type=Path, required=True, help="output root; one folder per molecule")
    p.add_argument("--config", type=Path, default=None, help="prep YAML (default: the built-in values, as in configs/prep.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="RDKit conformer seed (overrides config)")
    p.add_argument("--only", nargs="*", default=None, help="prepare only these molecule names")
    p.add_argument("--skip-existing", action="store_true", help="skip molecules whose folder already has topology.json")
    p.add_argument("--name", help="molecule name for --pdb/--xml or --prmtop/--inpcrd input")
    p.add_argument("--pdb", type=Path, help="your own structure (PDB with CONECT records)")
    p.add_argument("--xml", type=Path, help="your own serialized OpenMM System XML")
    p.add_argument("--prmtop", type=Path, help="your own Amber prmtop")
    p.add_argument("--inpcrd", type=Path, help="coordinates for --prmtop")
    add_log_level(p)
    return p


def select_only(entries: list, only: list[str], smi: Path) -> list:
    """The entries named by --only; a name not in the file is an error."""
    names = {e.name for e in entries}
    missing = [n for n in only if n not in names]
    if missing:
        raise MdkstepError(f"--only {missing[0]!r}: no molecule of that name in {smi} "
                           f"(names: {', '.join(sorted(names)) or 'none'})")
    return [e for e in entries if e.name in set(only)]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    cfg = load_config(PrepConfig, args.config, {"seed": args.seed}, args.set)
    check_writable(args.out_dir, "--out-dir")
    if args.pdb or args.xml or args.prmtop or args.inpcrd:
        if not args.name:
            raise MdkstepError("--name is required with --pdb/--xml or --prmtop/--inpcrd")
        out = prepare_from_files(args.name, args.out_dir, args.pdb, args.xml, args.prmtop, args.inpcrd, cfg)
        print(f"wrote {out}")
        return 0
    if not args.smiles:
        raise MdkstepError("give --smiles FILE, or your own system with --pdb/--xml or --prmtop/--inpcrd")
    entries, errors = read_smi(args.smiles)
    if not entries and not errors:
        raise MdkstepError(f"{args.smiles}: no molecules (expected 'SMILES name' lines)")
    if args.only:
        entries = select_only(entries, args.only, args.smiles)
    ok: list[str] = []
    times: list[float] = []
    from tqdm import tqdm

    for entry in tqdm(entries, desc="prep", unit="mol", disable=None):
        if args.skip_existing and (args.out_dir / entry.name / "topology.json").is_file():
            ok.append(entry.name)
            continue
        t0 = time.perf_counter()
        try:
            prepare_from_smiles(entry, args.out_dir, cfg)
        except MdkstepError as e:
            errors.append(f"{args.smiles}:{entry.line_no}: {entry.name}: {e}")
            continue
        times.append(time.perf_counter() - t0)
        ok.append(entry.name)
    for msg in errors:
        print(f"error: {msg}", file=sys.stderr)
    mean_t = f", {sum(times) / len(times):.2f} s per molecule" if times else ""
    print(f"prepared {len(ok)} molecule(s) into {args.out_dir}{mean_t}; {len(errors)} failed")
    return 1 if errors else 0


def run() -> None:
    """Console script ``mdkstep-prep``: :func:`main` with one-line errors (exit 2)."""
    run_cli(main)


if __name__ == "__main__":  # python -m mdkstep.cli.prep
    run()
