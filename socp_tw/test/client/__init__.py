"""Tests of socp-client (socp_tw/client/), a package mirroring it."""
