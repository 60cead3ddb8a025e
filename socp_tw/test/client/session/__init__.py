"""Tests of socp_tw.client.session."""
