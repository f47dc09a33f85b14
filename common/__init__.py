"""Shared code for every yahoo-llm service: settings, topics, messages, logging, Kafka helpers."""
