"""How many blocks one `eth_getLogs` asks for: adapted to how dense the logs are.

A batch is one database transaction, so the range aims at about `target_logs` logs:
after each batch the next range is scaled by target ÷ seen (at most doubling), and a
node's "too many results" / timeout / response-size error halves it at once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AdaptiveRange:
    maximum: int
    target_logs: int
    size: int = 0  # 0: start at the maximum

    def __post_init__(self) -> None:
        if self.maximum < 1 or self.target_logs < 1:
            raise ValueError("the block range and the target of logs per batch are at least 1")
        self.size = min(self.size or self.maximum, self.maximum)

    def shrink(self) -> bool:
        """Halve the range after an error; False when it is one block already (give up)."""
        if self.size == 1:
            return False
        self.size = max(1, self.size // 2)
        return True

    def observe(self, blocks: int, logs: int) -> None:
        """A batch of `blocks` blocks held `logs` logs: size the next one."""
        if blocks < 1:
            return
        wanted = self.maximum if logs == 0 else blocks * self.target_logs // logs
        if blocks < self.size:  # a batch cut short at the head says nothing about growing
            self.size = max(1, min(wanted, self.size))
            return
        self.size = max(1, min(wanted, blocks * 2, self.maximum))
