"""Schedules and the automation sensor (built from the environment when the definitions load)."""
