"""Development tools that are never installed: the `make demo` flow and the strict IMDSv2 fake
the tests, the benchmarks and the demo share. The wheel and the .deb carry `agent/` only."""
