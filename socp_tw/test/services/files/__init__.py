"""Tests of ``socp_tw.services.files``."""
