"""Finding where the indexed chain and the node's chain part ways.

A block hash commits to every block before it, so if the stored hash at height h equals
the chain's, every stored block below h does too: the fork point is the highest height
where they agree. It is searched from the indexed tip backwards in windows that double
(16, 32, 64, … blocks), each one JSON-RPC batch, so a reorg of depth d costs about
log2(d) round trips.
"""

from __future__ import annotations

from collections.abc import Callable


class ReorgTooDeep(RuntimeError):
    """The chain forks below the oldest block hash kept: rewinding needs a person."""


Hashes = Callable[[int, int], dict[int, str]]  # (low, high) → {height: hash}, heights it knows


def find_fork_point(tip: int, lowest: int, start_block: int, stored: Hashes, chain: Hashes, window: int = 16) -> int:
    """The highest height ≤ `tip` whose stored hash is the chain's.

    `lowest` is the oldest stored height. When no stored hash matches, the fork is below
    everything indexed if nothing was pruned (`lowest` is the start block): the answer
    is then `start_block − 1`, rewinding all; otherwise ReorgTooDeep.
    """
    high = tip
    while high >= lowest:
        low = max(lowest, high - window + 1)
        ours, theirs = stored(low, high), chain(low, high)
        for height in range(high, low - 1, -1):
            if height in ours and ours[height] == theirs.get(height):
                return height
        high, window = low - 1, window * 2
    if lowest <= start_block:
        return start_block - 1
    raise ReorgTooDeep(f"the chain forks below block {lowest}, the oldest block hash kept")
