"""The course's experiments against a running stack (`make experiment`, `python -m experiments`):
a cache study (popularity x arrivals x Redis policy x cache size x TTL) and a pipeline study (latency,
waits per topic, retries, regeneration, threshold sweep), written as a report with plots."""
