"""The one error type users see: which setting to fix (`field`) and what is wrong with it (`detail`).

Every front end (CLI, ComfyUI nodes, HTTP routes) shows `str(error)` = "field: detail", and code that needs to
re-home an error under another name (a node input, a CLI flag, a dotted config path) uses `relabel` instead of
splitting message strings. Subclasses say which layer raised it; catch `EchoError` to catch them all.
"""

from __future__ import annotations

MAX_QUOTE = 200  # characters of user text an error message may quote


class EchoError(ValueError):
    """A user-facing error. `field` is the input as the user sees it ("" when none applies)."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}" if field else detail)
        self.field = field
        self.detail = detail

    def relabel(self, field: str) -> "EchoError":
        """The same error, reported under `field` (same class, same detail, extra attributes kept)."""
        clone = self.__class__.__new__(self.__class__)
        clone.__dict__.update(self.__dict__)
        EchoError.__init__(clone, field, self.detail)
        return clone


class ConfigError(EchoError):
    """An invalid EchoConfig value; `field` is the dotted path of the key (e.g. "smooth.decay.min_rate")."""


class SpecError(EchoError):
    """A run setting that cannot work (model, size, steps, policy, routing)."""


class InputError(EchoError):
    """A front end's input (a node input, a CLI flag, a file) that cannot be used."""


def quote(text: object, limit: int = MAX_QUOTE) -> str:
    """repr of user text, cut to `limit` characters so an error never echoes a whole megabyte prompt."""
    s = repr(text)
    return s if len(s) <= limit else f"{s[:limit]}... ({len(s)} characters)"
