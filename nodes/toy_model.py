"""The bundled demo model, read once per process (a few MB, read-only): shared by the toy nodes and the previews."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from echo_core.errors import InputError


@lru_cache(maxsize=1)
def toy_bundle() -> Any:
    try:
        from echo_core.toy.loader import load_toy_model

        return load_toy_model()
    except (ImportError, FileNotFoundError) as e:
        raise InputError("model_name", f"the bundled demo model is not available in this install: {e}") from None
