"""This machine: writer, secret folders, trust walk, render record, systemd; never commands, observe, cli."""
