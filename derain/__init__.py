"""derain: derainers (MSPFN, PReNet, ...), rain synthesis, paired data, losses, restoration metrics,
training and inference."""

from derain.registry import add_model, build_model, list_models, register_model

__all__ = ["add_model", "build_model", "list_models", "register_model"]
