"""What an operator runs and reads: the `governor` command, metrics and the HTTP endpoint, the contract export, the
bundled nats-server."""
