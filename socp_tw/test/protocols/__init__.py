"""Tests of ``socp_tw.protocols``."""
