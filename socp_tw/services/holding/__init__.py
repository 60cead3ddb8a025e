"""Store-and-forward of DMs (docs/MESH.md "Held messages"): ``service`` holds, hands over and
expires; ``queue`` keeps them (SQLite, or memory in tests)."""

from socp_tw.services.holding.queue import HeldDM, MemoryHeldQueue, SQLHeldQueue, read_held_summary
from socp_tw.services.holding.service import HeldMessages, QueueFull

__all__ = ["HeldDM", "HeldMessages", "MemoryHeldQueue", "QueueFull", "SQLHeldQueue", "read_held_summary"]
