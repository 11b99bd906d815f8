"""Append-only records of a run and the tidy summary tables built from them."""
