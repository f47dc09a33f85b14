"""questions-pending -> LLM (Ollama API) -> llm-responses-success, or an error topic by failure kind."""
