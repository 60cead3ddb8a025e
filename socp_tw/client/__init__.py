"""``socp-client``: a terminal client for SOCP v1.3 servers (see docs/CLIENT.md)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; imports the reactor only when run."""
    from socp_tw.client.app import main as run

    return run(argv)


__all__ = ["main"]
