"""What operators see published: outcomes, metrics, inventory; imports aws, host, template, never commands."""
