"""An Ollama-API-compatible server for a small real model shipped on PyPI (SmolLM2-135M-Instruct).

For machines without Ollama: `make up` starts it when nothing answers at OLLAMA_URL. It runs the
model's GGUF file on llama.cpp (llama-cpp-python, built once by scripts/install.sh), or on
transformers when llama.cpp is not available (LOCAL_LLM_ENGINE; local_llm/engine.py). It is a small
demo model: its answers are often wrong, which the pipeline's scoring then shows honestly.
"""
