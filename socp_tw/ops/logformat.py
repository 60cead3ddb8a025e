"""``--log-format text|json``: the observer twistd logs through (issue 16).

``text`` is twistd's classic line with a short tag (``[mesh#info]``, not the full class path);
``json`` is one JSON object per line (NDJSON: no ``\\x1e`` record separator, unlike Twisted's
own ``jsonFileLogObserver``) with ``time`` (ISO 8601, UTC), ``level``, ``ns`` (the short
namespace), ``msg`` (the rendered message) and the event's own fields.

twistd builds its observer from ``--logger``, a dotted name it imports and calls with no
arguments, after ``makeService``.  So the options record the format and log file here
(:func:`configure`) and point ``--logger`` at :func:`observer`, which opens the log file
as twistd would (``-`` or none: stdout; else a :class:`LogFile` rotated at 1 MB and on
``SIGUSR1``), but created mode 0600, which rotated files keep (a rename).  Unlike twistd's,
``SIGUSR1`` reopens the file when something else (logrotate) has moved it away.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, LogLevel, formatEvent, formatTime
from twisted.python.logfile import LogFile

FORMATS = ("text", "json")
#: What ``--logger`` is set to when ``--log-format`` chooses our observer.
OBSERVER_NAME = "socp_tw.ops.logformat.observer"
#: Log files (and so rotated ones) are created owner-only: they name users and servers.
LOG_FILE_MODE = 0o600
#: twistd's own rotation size for ``--logfile``.
ROTATE_BYTES = 1_000_000

#: Event fields that are the logging system's, not the event's own.
_RESERVED = frozenset({"format", "message", "system", "time", "isError", "printed", "why", "failure"})
#: Field names never written out, whatever a caller logs (a second line of defence).
_SECRET_WORDS = ("password", "secret", "private", "token", "plaintext", "key_pem", "verifier")
#: Leading namespace parts that say nothing in a short tag.
_NOISE = frozenset({"socp_tw", "services", "protocols", "ops"})

_config: dict[str, Any] = {"format": "text", "logfile": None, "rotate_bytes": ROTATE_BYTES}


def configure(log_format: str, logfile: str | None, rotate_bytes: int = ROTATE_BYTES) -> None:
    """Record what :func:`observer` will build (called while ``twistd socp`` options are parsed)."""
    _config.update(format=log_format, logfile=logfile, rotate_bytes=rotate_bytes)


def short_namespace(namespace: str | None) -> str:
    """``socp_tw.services.mesh.Mesh`` -> ``mesh``; ``twisted.internet.base`` -> ``twisted``."""
    if not namespace:
        return "-"
    parts = namespace.split(".")
    if parts[0] == "log_legacy":  # twisted.python.log's old-style events
        return "twisted"
    if parts[0] != "socp_tw":
        return parts[0]
    kept = [p for p in parts if p not in _NOISE and not p[:1].isupper() and not p.startswith("_")]
    return ".".join(kept) or "socp"


def _level(event: dict) -> str:
    level = event.get("log_level")
    if isinstance(level, type(LogLevel.info)):
        return level.name
    return "error" if event.get("isError") else "info"


def _message(event: dict) -> str:
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            text = f"{text}\n{failure.getTraceback()}".strip()
        except Exception:  # a broken failure must not stop logging
            text = f"{text} ({failure!r})"
    return text


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value[:50]]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in list(value.items())[:50]}
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value)


def _secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def event_as_json(event: dict) -> str | None:
    """One NDJSON line for ``event`` (with its newline), or None for an event with nothing to say."""
    if event.get("log_format") is None and not event.get("message") and "log_failure" not in event:
        return None
    when = event.get("log_time")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        if when is not None
        else None,
        "level": _level(event),
        "ns": short_namespace(event.get("log_namespace")),
        "msg": _message(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _RESERVED or key in record:
            continue
        record[key] = "[redacted]" if _secret(key) else _jsonable(value)
    return json.dumps(record, ensure_ascii=False, default=str) + "\n"


def event_as_text(event: dict) -> str | None:
    """twistd's classic line, ``TIME [ns#level] message``, with the short namespace."""
    if event.get("log_format") is None and not event.get("message") and "log_failure" not in event:
        return None
    when = formatTime(event.get("log_time"))
    message = _message(event).replace("\n", "\n\t")
    return f"{when} [{short_namespace(event.get('log_namespace'))}#{_level(event)}] {message}\n"


def file_observer(stream: IO[str], log_format: str = "text") -> ILogObserver:
    """An observer writing ``log_format`` lines to ``stream``."""
    return FileLogObserver(stream, event_as_json if log_format == "json" else event_as_text)


def rotate_or_reopen(log_file: LogFile) -> None:
    """SIGUSR1: reopen ``log_file`` if something (logrotate) moved it away, else rotate it ourselves."""
    try:
        moved = os.stat(log_file.path).st_ino != os.fstat(log_file._file.fileno()).st_ino
    except OSError:  # gone, or our file is closed
        moved = True
    if moved:
        log_file.reopen()
    else:
        log_file.rotate()


def open_log_file(path: str, rotate_bytes: int = ROTATE_BYTES) -> LogFile:
    """``path`` as twistd opens ``--logfile`` (rotated at ``rotate_bytes``, 0: never, and on
    SIGUSR1), created mode 0600."""
    log_file = LogFile.fromFullPath(path, rotateLength=rotate_bytes or None, defaultMode=LOG_FILE_MODE)
    if not signal.getsignal(signal.SIGUSR1):

        def on_usr1(_signum, _frame) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(rotate_or_reopen, log_file)

        signal.signal(signal.SIGUSR1, on_usr1)
    return log_file


def observer() -> ILogObserver:
    """The observer factory twistd calls for ``--logger socp_tw.ops.logformat.observer``."""
    logfile = _config["logfile"]
    if not logfile or logfile == "-":
        return file_observer(sys.stdout, _config["format"])
    stream = open_log_file(logfile, _config["rotate_bytes"])
    return file_observer(stream, _config["format"])


def apply_to_twistd(parent: Any, log_format: str, rotate_bytes: int = ROTATE_BYTES) -> None:
    """Point twistd's ``--logger`` at :func:`observer` unless ``--logger`` or ``--syslog`` was given.

    ``parent`` is twistd's parsed ``ServerOptions`` (it imports ``--logger`` after us).
    """
    if parent.get("logger") is not None or parent.get("syslog"):
        return
    logfile = parent.get("logfile")
    if not logfile:
        logfile = "-" if parent.get("nodaemon") else "twistd.log"
    configure(log_format, logfile, rotate_bytes)
    parent["logger"] = OBSERVER_NAME
