"""if-governor: capability-aware task assignment and budget governance for agent swarms, served over NATS."""

__version__ = "0.1.0"
