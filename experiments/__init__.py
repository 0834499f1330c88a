"""Command-line experiments: thin absl mains around ``sphereembed.training``."""
