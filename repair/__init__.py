"""repair: find where a quantized model's math reasoning breaks, and fix it with a LoRA adapter."""

__version__ = "0.1.0"
