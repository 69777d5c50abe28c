#!/usr/bin/env python3
"""The write amplification a greedy segment cleaner cannot beat under
uniform random overwrites, by simulation of the policy alone.

A data region of SEGMENTS segments of BLOCKS blocks holds a fraction `u`
of live blocks (for MlsDisk: the disk's fill times (100 - reserve) / 100).
Blocks are overwritten uniformly at random and appended at the log's head;
when fewer than `RESERVE` segments are free, the segment with the fewest
live blocks is cleaned (its live blocks appended again). The write
amplification is (user writes + moved blocks) / user writes, counted over
the second half of the run (the first half reaches the steady state).

It models only the data log: no index writes, no batching. MlsDisk's
measured write amplification also counts the index's device writes.

    scripts/cleaning-model.py 0.6 0.72 0.81 0.9
"""

import random
import sys

SEGMENTS = 256
BLOCKS = 256
RESERVE = 3
ROUNDS = 6  # overwrites, in multiples of the live blocks


def greedy_wa(u, seed=1):
    rng = random.Random(seed)
    live_n = int(SEGMENTS * BLOCKS * u)
    where = [None] * live_n  # block -> (segment, slot)
    valid = [0] * SEGMENTS
    slots = [[] for _ in range(SEGMENTS)]
    free = list(range(SEGMENTS))
    head = [free.pop(), 0]

    def append(b):
        if head[1] == BLOCKS:
            head[0], head[1] = free.pop(), 0
            slots[head[0]] = []
        s = head[0]
        slots[s].append(b)
        where[b] = (s, head[1])
        valid[s] += 1
        head[1] += 1

    def drop(b):
        if where[b] is not None:
            s, i = where[b]
            valid[s] -= 1
            slots[s][i] = None

    for b in range(live_n):
        append(b)
    total = ROUNDS * live_n
    user = moved = 0
    user0 = moved0 = 0
    for step in range(total):
        while len(free) < RESERVE:
            used = [s for s in range(SEGMENTS) if s != head[0] and s not in free]
            victim = min(used, key=lambda s: valid[s])
            for b in [b for b in slots[victim] if b is not None]:
                drop(b)
                append(b)
                moved += 1
            slots[victim] = []
            valid[victim] = 0
            free.insert(0, victim)
        b = rng.randrange(live_n)
        drop(b)
        append(b)
        user += 1
        if step == total // 2:
            user0, moved0 = user, moved
    return (user - user0 + moved - moved0) / (user - user0)


def main():
    fills = [float(a) for a in sys.argv[1:]] or [0.6, 0.72, 0.81, 0.9]
    print("| live fraction of the data region | greedy write amplification |")
    print("|---:|---:|")
    for u in fills:
        if not 0.0 < u < 1.0:
            sys.exit(f"a live fraction must be between 0 and 1: {u}")
        print(f"| {u:.2f} | {greedy_wa(u):.2f} |")


if __name__ == "__main__":
    main()
