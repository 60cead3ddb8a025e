"""Tests of ``socp_tw.services.mesh``."""
