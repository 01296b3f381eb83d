"""Using a trained model: batch prediction (``predict``: hf and vllm backends, prompts encoded by
LLaMA-Factory's own template code) and interactive use (``serve``: ``llamafactory-cli chat`` / ``api``)."""
