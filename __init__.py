"""ComfyUI entry point of the Echo-Forcing plugin.

The node modules import ComfyUI, so they load only when ComfyUI is importable; `echo_core` (the algorithm)
never needs the host, and this package can be imported - and tested - without it.
"""

from __future__ import annotations

import os
import sys

WEB_DIRECTORY = "./web/js"

_ROOT = os.path.dirname(os.path.abspath(__file__))
if _ROOT not in sys.path:
    # echo_core uses absolute imports. Appended, not prepended: the host's own modules (e.g. its `nodes`) win.
    sys.path.append(_ROOT)

try:
    import comfy_api.latest  # noqa: F401
except ImportError:  # not inside ComfyUI: no nodes, and no entry point for anyone to call
    __all__ = ["WEB_DIRECTORY"]
else:
    from .nodes import EchoForcingExtension

    async def comfy_entrypoint() -> EchoForcingExtension:
        return EchoForcingExtension()

    __all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
