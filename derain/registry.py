"""The one registry of derainers: ``register_model`` to add, ``build_model`` to construct by name.

Every registered model maps ``B×3×H×W`` float RGB in [0, 1] to the same shape, for any H and W.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

F = TypeVar("F", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str | None = None, *, override: bool = False) -> Callable[[F], F]:
    """Decorator registering a factory (or ``nn.Module`` class) under ``name`` (default: its ``__name__``).

    Example::

        @register_model("my-net")
        class MyNet(nn.Module): ...
    """

    def deco(factory: F) -> F:
        key = name or factory.__name__
        add_model(key, factory, override=override)
        return factory

    return deco


def add_model(name: str, factory: Callable[..., nn.Module], *, override: bool = False) -> None:
    """Register ``factory`` under ``name`` without a decorator (one call for a user's own module)."""
    if name in _MODELS and not override and _MODELS[name] is not factory:
        raise KeyError(f"a derainer named {name!r} is already registered (pass override=True to replace it)")
    _MODELS[name] = factory


def list_models() -> list[str]:
    """Names of all registered derainers, sorted."""
    _ensure_builtin()
    return sorted(_MODELS)


def build_model(name: str, **overrides: Any) -> nn.Module:
    """Construct the registered derainer ``name`` with keyword overrides of its config.

    Unknown names raise a KeyError that lists the known ones.
    """
    _ensure_builtin()
    if name not in _MODELS:
        raise KeyError(f"unknown derainer {name!r}; known: {', '.join(sorted(_MODELS))}")
    factory = _MODELS[name]
    try:
        model = factory(**overrides)
    except TypeError as exc:
        valid = _options(factory)
        unknown = sorted(set(overrides) - set(valid)) if valid else []
        if unknown:
            raise ValueError(f"derainer {name!r}: unknown option {unknown[0]!r} (its options: "
                             f"{', '.join(valid)})") from exc
        raise
    model.derain_name = name  # type: ignore[attr-defined]
    model.derain_config = dict(overrides)  # type: ignore[attr-defined]
    return model


def model_options(name: str) -> list[str]:
    """The keyword options the registered derainer ``name`` accepts (for checking configs before any work)."""
    _ensure_builtin()
    if name not in _MODELS:
        raise KeyError(f"unknown derainer {name!r}; known: {', '.join(sorted(_MODELS))}")
    return _options(_MODELS[name])


def _options(factory: Callable[..., nn.Module]) -> list[str]:
    """The keyword options a factory accepts (a ``**overrides`` factory: those of the class it returns)."""
    params = inspect.signature(factory).parameters
    named = [k for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        try:
            built = typing.get_type_hints(factory).get("return")
        except (NameError, TypeError):  # an annotation that does not resolve: only the named options are known
            built = None
        if inspect.isclass(built):
            named += [k for k, p in inspect.signature(built).parameters.items() if p.kind not in (p.VAR_POSITIONAL,
                                                                                               p.VAR_KEYWORD)]
    return named


PLUGIN_GROUP = "derainbench.derainers"  # entry points whose modules register derainers when imported
_plugins_loaded = False


def _ensure_builtin() -> None:
    """Import the built-in model modules, and once the modules other packages name under the entry-point group
    ``derainbench.derainers``, so their decorators have run (how an installed package adds a derainer to the CLI)."""
    global _plugins_loaded
    from derain import models  # noqa: F401

    if not _plugins_loaded:
        _plugins_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=PLUGIN_GROUP):
            try:
                ep.load()
            except Exception as exc:  # a broken plugin must say which, not break every command obscurely
                raise ImportError(f"derainer plugin {ep.name!r} ({ep.value}, entry point group {PLUGIN_GROUP}) "
                                  f"failed to import: {type(exc).__name__}: {exc}") from exc
