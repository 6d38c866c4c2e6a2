"""secrets-agent: SSM Parameter Store secrets rendered into a systemd EnvironmentFile on tmpfs."""

# Written from CHANGELOG.md's first heading by `make version` (packaging/version.py): the wheel,
# the .deb and `--version` read it from here.
__version__ = "0.2.0"
