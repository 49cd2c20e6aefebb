"""The wire contract of if-governor: msgspec Structs for requests, replies, events, policy and config.

Import from the modules (`schemas.requests`, `schemas.replies`, `schemas.events`, `schemas.endpoints`, ...): each
holds one part of the contract.
"""
