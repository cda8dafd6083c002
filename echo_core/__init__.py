"""Echo-Forcing core: the KV-cache policy, the causal Wan model, the sampler and the timeline (no ComfyUI)."""

__version__ = "0.1.0"  # keep equal to pyproject.toml
