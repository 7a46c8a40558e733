"""Servers that tests and benchmarks start as real processes (test upstreams, not mocks of the proxy)."""
