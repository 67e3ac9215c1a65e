"""MaDiS."""
