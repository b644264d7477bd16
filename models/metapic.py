"""Metapic tables (offers, participants, participant daily stats)."""
