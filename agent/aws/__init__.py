"""Talks to AWS and reads its answers: IMDS, endpoints, clients, SSM, retry; imports errors, log, config."""
