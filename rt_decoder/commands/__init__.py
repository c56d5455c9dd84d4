"""Subcommands of the rt-decoder CLI, one module each (see rt_decoder.cli)."""
