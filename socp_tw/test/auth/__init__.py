"""Tests for :mod:`socp_tw.auth`, one module per module there."""
