"""Tests of ``socp_tw.services``, one package per service package."""
