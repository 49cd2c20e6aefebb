"""The service around the core, in data-flow order: bus (decode → command) → actor (mailbox → core) → replies and
events → bus; the worker's lifecycle (app), its configuration and the replay of the journal into a core."""
