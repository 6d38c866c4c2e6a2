"""Benchmarks of the agent against the seed's AWS CLI flow and under a fleet boot storm (`make bench`)."""
