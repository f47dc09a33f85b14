"""The live dashboard (:8090): charts from Prometheus, outcomes from PostgreSQL, question traces from Kafka."""
