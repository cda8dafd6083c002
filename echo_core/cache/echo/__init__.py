"""Echo-Forcing's cache policy: hierarchical memory, phase compression, scene recall, decay, switches.

Each mechanism keeps its math and its state in one module; per layer it holds only what it reads (allocated
at the layer's first call, shaped after its k):

    window.py       the attention window K/V [B, H, W*S, D] (model dtype); a call rewrites only the chunk's rows
    memory.py       slot layout and scene clock; anchor source K/V [B, H, P'*S, D] (only if anchor_frames > 0)
    compression.py  history ring K/V [B, H, W*S, D], reuse counts, calibration sums (only if compressed_frames > 0)
    recall.py       recall candidates (3 frames), the scene's query sum and first frame; the scene pool
    decay.py        weights and rates [W*S] float32, the decay running since the last switch
    transitions.py  switch decisions (no state)
    chunk.py        the per-chunk plan (frozen) and the little that changes while a chunk runs
    policy.py       EchoCache, composing them; its docstring lists where we depart from the official code

versus the official window + k_original + v_original + k_raw + history + 12 candidate frames. Where each lives
(`offload`, echo_core.cache.placement): on CUDA by default the raw window keys, the history ring, the anchor source,
the recall candidates and the first frame sit in pinned host memory and are staged up one layer ahead when read;
the device keeps the window's values, the model's rotated keys (their only device copy) and the small state.
With kv_dtype "float8_e4m3fn" the window's K and V are fp8 with float32 scales and both stay on the device, and the
model rotates the keys per call (no memo); the side state is unchanged (model dtype, on the host when offloading).
The scene pool lives on `pool_device` (default CPU, like the official code, so pooled scenes cost host RAM, not GPU
memory, and a switch pays one host->device copy of one frame per layer) in the model dtype (official: float32).
"""

from echo_core.cache.echo.policy import EchoCache

__all__ = ["EchoCache"]
