"""Tests of socp_tw.client.files."""
