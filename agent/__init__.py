"""secrets-agent: SSM Parameter Store secrets rendered into a systemd EnvironmentFile on tmpfs."""

# The one place the version lives: the wheel, the .deb and `--version` read it from here.
__version__ = "0.1.0"
