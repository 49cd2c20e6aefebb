"""Durable storage behind a one-way boundary: the journal (a JetStream stream), snapshots, the lease, verification.

Nothing here imports the core or the service: catch-up yields decoded entries and the caller applies them.
"""
