"""Print a bench `mm_schedules=[...]` value whose schedule is N distinct random orders of a multiset of
strides (uniform over its distinct orders), for draws too long for {permutations: [...]} (which enumerates
every permutation: 11 strides = 40 M of them). docs/results/mm-calls.md.

usage: python studies/mm_calls/random_orders.py 4 8 9 10 12 16 16 16 16 16 16 [--n 400] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import random


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ks", type=int, nargs="+", help="the strides of one cycle (repeats allowed)")
    ap.add_argument("--n", type=int, default=400, help="distinct orders to draw")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng, orders = random.Random(a.seed), set()
    while len(orders) < a.n:
        o = list(a.ks)
        rng.shuffle(o)
        orders.add(tuple(o))
    print("mm_schedules=" + json.dumps([[list(o) for o in sorted(orders)]]))


if __name__ == "__main__":
    main()
