"""A small read-only Kafka browser (:8080) for the native stack, where the kafbat Kafka UI of the
Docker fleet cannot run (it is not published on the registries these machines reach)."""
