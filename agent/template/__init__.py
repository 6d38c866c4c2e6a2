"""Jinja, the values, the formats table and the pure encoders: no I/O; imports only errors and itself."""
