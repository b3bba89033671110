#!/usr/bin/env python
"""Collect <root>/<split>/k<K>/final_metrics.json into a markdown table (test split)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(root: str) -> None:
    print("| split | k | predictor | pos RMSE Å | bond RMSE Å (all / heavy) | angle RMSE ° | dihedral RMSE ° | vel RMSE nm/ps |")
    print("|---|---|---|---|---|---|---|---|")
    for f in sorted(Path(root).glob("*/k*/final_metrics.json"), key=lambda p: (p.parts[-3], int(p.parent.name[1:]))):
        m = json.loads(f.read_text())
        test = m.get("test") or m.get("val")
        for pred in ("no_move", "ballistic", "model"):
            r = test[pred]
            print(f"| {f.parts[-3]} | {f.parent.name[1:]} | {pred} | {r['pos_rmse_A']:.4f} | {r['bond_rmse_A']:.4f} / "
                  f"{r['bond_rmse_heavy_A']:.4f} | {r['angle_rmse_deg']:.2f} | {r['dihedral_rmse_deg']:.2f} | "
                  f"{r['vel_rmse_nm_ps']:.3f} |")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("root", nargs="?", default="outputs/one_jump", help="study folder (default: %(default)s)")
    main(p.parse_args().root)
