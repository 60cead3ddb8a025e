"""Tests for socp_tw.auth.errors."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from socp_tw.auth.errors import CorruptKeystore, KeystoreError, LoginError, WrongPassword


class ErrorHierarchyTests(SynchronousTestCase):
    def test_hierarchy(self) -> None:
        for cls in (WrongPassword, CorruptKeystore, LoginError):
            self.assertTrue(issubclass(cls, KeystoreError))
        self.assertTrue(issubclass(KeystoreError, ValueError))
