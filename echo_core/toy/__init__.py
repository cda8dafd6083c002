"""The bundled toy world and demo model. `load_toy_model` is imported lazily (it pulls in the DiT)."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("load_toy_model", "ToyBundle"):
        from echo_core.toy import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'echo_core.toy' has no attribute {name!r}")
