"""Tests of ``socp_tw.services.public``."""
