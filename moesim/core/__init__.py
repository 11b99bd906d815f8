"""Units, errors and seeded random streams; imports nothing else from moesim."""
