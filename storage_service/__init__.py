"""The front door (:5001) and the system of record: PostgreSQL, cached in Redis."""
