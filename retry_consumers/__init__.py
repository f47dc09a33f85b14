"""Retry strategies: errors-overload (exponential backoff) and errors-quota (fixed delay)."""
