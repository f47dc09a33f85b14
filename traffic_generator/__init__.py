"""Replays a Yahoo Answers-format CSV against POST /query at a chosen rate (see generator.py)."""
