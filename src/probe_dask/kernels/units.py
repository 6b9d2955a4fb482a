"""How the Triton kernels cut a block into programs: the tile and the slices of a giant
latent. Apart from ``triton_backend`` (which needs torch) so that the memory model can
size a GPU's work lists without importing torch.

Memory per process: nothing (constants).
"""

__all__ = ["DEFAULT_TILE", "DEFAULT_SLICES", "DEFAULT_SPLIT_EVENTS"]

#: ``(event_tile, pair_tile)`` of a program, powers of two (tl.arange): 1024 (event x pair)
#: elements per loop step, 8 per thread of 4 warps (each holding its float64 sums in
#: registers across the loop); pair tiles of 32 cut 151 classes into 5. Untuned (no GPU yet).
DEFAULT_TILE = (32, 32)
#: Slices of a giant latent, and the events above which a latent is one: a latent of the
#: power-law head would otherwise be one program per pair tile, holding up the whole pass.
DEFAULT_SLICES = 8
DEFAULT_SPLIT_EVENTS = 2**16
