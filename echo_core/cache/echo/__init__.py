"""Echo-Forcing's cache policy: hierarchical memory, phase compression, scene recall, decay, switches."""

from echo_core.cache.echo.policy import EchoCache

__all__ = ["EchoCache"]
