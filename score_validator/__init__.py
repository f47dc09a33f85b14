"""BERTScore over HTTP (:8000), and an optional backup consumer of llm-responses-success."""
