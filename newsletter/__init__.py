"""newsletter: a self-hosted featured-stories email digest."""

__version__ = "0.1.0"

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_surface(
    package: str, surface: Mapping[str, str], namespace: dict[str, Any]
) -> Callable[[str], Any]:
    """A package's module ``__getattr__``: each public name loads its module on first use.

    Every stage's ``__init__`` lists its public names in a ``_SURFACE`` table
    (name -> submodule), so importing a package costs nothing until a name is used
    and a CLI command pays only for the stages and libraries it really runs.
    """

    def __getattr__(name: str) -> Any:
        module = surface.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        loaded = import_module(f"{package}.{module}")
        value = loaded if module == name else getattr(loaded, name)
        namespace[name] = value
        return value

    return __getattr__
