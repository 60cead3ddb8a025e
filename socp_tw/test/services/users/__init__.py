"""Tests of ``socp_tw.services.users``."""
