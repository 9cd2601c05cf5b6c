"""The one registry of derainers: ``register_model`` to add, ``build_model`` to construct by name.

Every registered model maps ``B×3×H×W`` float RGB in [0, 1] to the same shape, for any H and W.
"""

from __future__ import annotations

import inspect
import typing
import warnings
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
    check_options(name, overrides)
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


def check_options(name: str, options: dict[str, Any]) -> None:
    """Check ``options`` for the registered derainer ``name`` without building it (a config is checked before any
    work): the options it requires are given, typed options have their type and bound (:func:`_check_values`), and
    the factory's own ``check_options(**options)`` (if it has one, e.g. the zoo's hyperparameter bounds) passes.
    Raises ValueError naming the option."""
    _ensure_builtin()
    if name not in _MODELS:
        raise KeyError(f"unknown derainer {name!r}; known: {', '.join(sorted(_MODELS))}")
    factory = _MODELS[name]
    params = _parameters(factory)
    check = getattr(factory, "check_options", None)
    if check is not None:
        check(**{k: v for k, v in options.items() if k in params})
    required = [k for k, p in params.items() if p.default is p.empty and k not in options]
    if required:
        raise ValueError(f"derainer {name!r} needs the option {required[0]!r} (its options: "
                         f"{', '.join(_options(factory))})")
    _check_values(name, factory, options)


def model_options(name: str) -> list[str]:
    """The keyword options the registered derainer ``name`` accepts (for checking configs before any work)."""
    _ensure_builtin()
    if name not in _MODELS:
        raise KeyError(f"unknown derainer {name!r}; known: {', '.join(sorted(_MODELS))}")
    return _options(_MODELS[name])


def _options(factory: Callable[..., nn.Module]) -> list[str]:
    """The keyword options a factory accepts (a ``**overrides`` factory: those of the class it returns)."""
    return list(_parameters(factory))


def _parameters(factory: Callable[..., nn.Module]) -> dict[str, inspect.Parameter]:
    """The keyword parameters of a factory (a ``**overrides`` factory: also those of the class it returns)."""
    params = inspect.signature(factory).parameters
    named = {k: p for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        try:
            built = typing.get_type_hints(factory).get("return")
        except (NameError, TypeError):  # an annotation that does not resolve: only the named options are known
            built = None
        if inspect.isclass(built):
            named.update({k: p for k, p in inspect.signature(built).parameters.items()
                          if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)})
    return named


MAX_OPTION = 1024  # bound on every integer model option (counts, widths; the built-ins' largest default is 256)


def _check_values(name: str, factory: Callable[..., nn.Module], options: dict[str, Any]) -> None:
    """Options whose default is a bool, an int or a sequence of ints must be one too, and integers at most
    :data:`MAX_OPTION`: a config or a checkpoint's model.json cannot ask for a billion stages (a hang) or put a
    string where a count goes. Options without a default of those kinds are left to the model."""
    params = _parameters(factory)
    for key, value in options.items():
        default = params[key].default if key in params else inspect.Parameter.empty
        where = f"derainer {name!r}: option {key!r}"
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{where} must be true or false, got {value!r}")
            continue
        if isinstance(default, int):
            values, kind = [value], "an integer"
        elif isinstance(default, (list, tuple)) and default and all(isinstance(v, int) for v in default):
            values, kind = (list(value) if isinstance(value, (list, tuple)) else [None]), "a list of integers"
        else:
            continue
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{where} must be {kind}, got {value!r}")
            if v > MAX_OPTION:
                raise ValueError(f"{where} = {v} is above {MAX_OPTION} (the bound on integer model options)")


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
            except Exception as exc:  # one broken plugin is named and left out; every other derainer still works
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                warnings.warn(f"derainer plugin {ep.name!r} ({ep.value}, entry point group {PLUGIN_GROUP}) failed to "
                              f"import and is left out: {type(exc).__name__}: {first} (fix or uninstall the package "
                              "that provides it)", stacklevel=3)
