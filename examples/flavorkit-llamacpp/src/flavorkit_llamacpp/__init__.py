"""An example third-party flavorkit backend: GGUF models served with llama-cpp-python."""
