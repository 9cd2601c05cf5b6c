"""Built-in derainer architectures; importing this module registers them."""

import importlib

for _name in ("identity", "mspfn", "prenet"):
    try:
        importlib.import_module(f"derain.models.{_name}")
    except ModuleNotFoundError as exc:  # a module still being written must not break the others
        if exc.name != f"derain.models.{_name}":
            raise

importlib.import_module("derain.zoo")  # the derainer "zoo": any architecture spandrel detects
