"""Build a cache policy by name: the one place the CLI, nodes and benchmarks choose between policies."""

from __future__ import annotations

from typing import Any

from echo_core.cache.base import CachePolicy
from echo_core.cache.rolling import RollingCache, full_cache

POLICY_NAMES = ("echo", "rolling", "full", "flush")


def make_cache(name: str, num_layers: int, *, window_frames: int = 21, sink_frames: int = 3,
               echo_config: Any = None, router: Any = None) -> CachePolicy:
    if name == "rolling":
        return RollingCache(num_layers, window_frames=window_frames, sink_frames=sink_frames)
    if name == "full":
        return full_cache(num_layers)
    if name == "flush":  # baseline: sink + rolling window, flushed to sink + last frames at every switch
        from echo_core.cache.flush import FlushCache

        return FlushCache(num_layers, window_frames=window_frames, sink_frames=sink_frames)
    if name == "echo":
        from echo_core.cache.echo.policy import EchoCache
        from echo_core.config import EchoConfig

        return EchoCache(num_layers, echo_config or EchoConfig(), router=router)
    raise ValueError(f"unknown memory policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
