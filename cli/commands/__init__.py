"""Subcommands of the rt-decoder CLI, one module each (see cli.main)."""
