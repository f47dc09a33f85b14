"""PyFlink DataStream job that scores LLM answers and routes them (see job.py)."""
