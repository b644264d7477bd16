"""Metapic: offers, participants and their daily statistics."""
