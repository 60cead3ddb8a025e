"""Tests for socp_tw.privatefile: atomic, owner-only replacement of a file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from socp_tw import privatefile
from socp_tw.privatefile import replacing_private, temp_path, write_private


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class WritePrivateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / "secret.json"
        old_umask = os.umask(0)  # the mode must not depend on a permissive umask
        self.addCleanup(os.umask, old_umask)

    def test_creates_owner_only(self) -> None:
        write_private(self.path, b"one")
        self.assertEqual(self.path.read_bytes(), b"one")
        self.assertEqual(_mode(self.path), 0o600)
        self.assertEqual(os.listdir(self.dir), ["secret.json"])

    def test_replaces_existing_file_and_its_mode(self) -> None:
        self.path.write_bytes(b"old content, longer than the new")
        os.chmod(self.path, 0o644)
        before = os.stat(self.path).st_ino
        write_private(self.path, b"new")
        self.assertEqual(self.path.read_bytes(), b"new")
        self.assertEqual(_mode(self.path), 0o600)
        self.assertNotEqual(os.stat(self.path).st_ino, before)  # a rename, not an in-place rewrite

    def test_leftover_temp_file_is_not_reused(self) -> None:
        """A crash's leftover, even world-readable, is replaced by a fresh 0600 file."""
        leftover = temp_path(self.path)
        leftover.write_bytes(b"half-written garbage")
        os.chmod(leftover, 0o644)
        write_private(self.path, b"new")
        self.assertEqual(self.path.read_bytes(), b"new")
        self.assertEqual(_mode(self.path), 0o600)
        self.assertEqual(os.listdir(self.dir), ["secret.json"])

    def test_temp_file_private_while_written(self) -> None:
        with replacing_private(self.path) as tmp:
            self.assertEqual(tmp.parent, self.dir)
            self.assertEqual(_mode(tmp), 0o600)
            self.assertEqual(tmp.read_bytes(), b"")
            self.assertFalse(self.path.exists())
            tmp.write_bytes(b"filled by someone else")
        self.assertEqual(self.path.read_bytes(), b"filled by someone else")

    def test_failed_write_keeps_old_file(self) -> None:
        write_private(self.path, b"old")
        self.assertRaises(TypeError, write_private, self.path, "not bytes")
        self.assertEqual(self.path.read_bytes(), b"old")
        self.assertEqual(os.listdir(self.dir), ["secret.json"])

    def test_failed_rename_keeps_old_file(self) -> None:
        write_private(self.path, b"old")

        def broken_replace(src: object, dst: object) -> None:
            raise OSError("disk on fire")

        self.patch(privatefile.os, "replace", broken_replace)
        self.assertRaises(OSError, write_private, self.path, b"new")
        self.assertEqual(self.path.read_bytes(), b"old")
        self.assertEqual(os.listdir(self.dir), ["secret.json"])

    def test_failure_inside_block_keeps_old_file(self) -> None:
        write_private(self.path, b"old")
        with self.assertRaises(ZeroDivisionError):
            with replacing_private(self.path) as tmp:
                tmp.write_bytes(b"partial")
                1 / 0  # noqa: B018
        self.assertEqual(self.path.read_bytes(), b"old")
        self.assertEqual(os.listdir(self.dir), ["secret.json"])

    def test_data_and_directory_are_synced(self) -> None:
        synced: list[int] = []
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            synced.append(stat.S_IFMT(os.fstat(fd).st_mode))
            real_fsync(fd)

        self.patch(privatefile.os, "fsync", fsync)
        write_private(self.path, b"data")
        self.assertEqual(synced, [stat.S_IFREG, stat.S_IFDIR])

    def test_directory_sync_failure_is_tolerated(self) -> None:
        real_open = os.open

        def no_dir_open(path: object, flags: int, *args: int) -> int:
            if Path(path) == self.dir:  # type: ignore[arg-type]
                raise OSError("cannot open a directory here")
            return real_open(path, flags, *args)  # type: ignore[arg-type]

        self.patch(privatefile.os, "open", no_dir_open)
        write_private(self.path, b"data")
        self.assertEqual(self.path.read_bytes(), b"data")

    def test_missing_directory_raises(self) -> None:
        self.assertRaises(FileNotFoundError, write_private, self.dir / "nope" / "x", b"data")
