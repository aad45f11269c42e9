"""GGUF on the Python side: export from Hugging Face, and reading files back."""
