"""Tab completion of the input line: command names, then user ids (or names, completed to ids)."""

from __future__ import annotations

from socp_tw.client.commands import COMMANDS, USER_ARGUMENT
from socp_tw.client.names import Names


def complete_line(before: str, names: Names | None) -> tuple[str, list[str]]:
    """Complete the text left of the cursor.

    Returns the new text left of the cursor and the candidates to list when there are
    several (empty when the completion was unique, or nothing matched).  A name is completed
    to its user's id, so the line says exactly who a message goes to.
    """
    if not before.startswith("/"):
        return before, []
    command, space, rest = before.partition(" ")
    if not space:
        matches = [f"/{name}" for name in COMMANDS if f"/{name}".startswith(command.lower())]
        if len(matches) == 1:
            return matches[0] + " ", []
        return _common(command, matches), matches if len(matches) > 1 else []
    if command[1:].lower() not in USER_ARGUMENT or " " in rest or names is None:
        return before, []
    head = f"{command} "
    ids = names.complete(rest)
    if len(ids) == 1:
        return head + ids[0] + " ", []
    if not ids:
        return before, []
    by_prefix = [user_id for user_id in ids if user_id.startswith(rest.lower())]
    grown = _common(rest, by_prefix) if len(by_prefix) == len(ids) else rest
    return head + grown, [names.tag(user_id) for user_id in ids]


def _common(typed: str, matches: list[str]) -> str:
    """The longest common prefix of ``matches`` when it is longer than ``typed``."""
    if not matches:
        return typed
    prefix = min(matches)
    for match in matches:
        while not match.startswith(prefix):
            prefix = prefix[:-1]
    return prefix if len(prefix) > len(typed) else typed
