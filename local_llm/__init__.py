"""An Ollama-API-compatible server for a small real model shipped on PyPI (SmolLM2-135M-Instruct).

For machines without Ollama: `make up` starts it when nothing answers at OLLAMA_URL. It is a small
demo model: its answers are often wrong, which the pipeline's scoring then shows honestly.
"""
