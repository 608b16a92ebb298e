"""Block-wise patch masks for masked image modelling (BEiT, Bao et al. 2022, Alg. 1; used by iBOT and DINOv2:
dinov2's `data/masking.py` and `collate_data_and_cast`).

One mask is a (h, w) bool grid over the patches of a global crop. It is grown block by block: each block is a
rectangle of area a ~ U(min_block, still missing) and aspect ratio r with log r ~ U(log 0.3, log 1/0.3), placed
uniformly in the grid; a block is kept only if it masks at least one new patch without overshooting the target
(up to 10 tries per block). Blocks, not scattered patches, because a single masked patch can be filled in from its
neighbours' pixels: hiding whole parts forces the network to predict them from context.

Per batch of n crops (`BatchMasker`), as `collate_data_and_cast`: a fraction p (0.5) of the crops is masked, their
target ratios spread evenly over (0.1, 0.5) — crop i of the masked ones draws its ratio in the i-th of equal
sub-intervals — and the other crops get no mask; the list is shuffled. Randomness comes from the training step's
torch generator (one draw seeds a Python RNG), so masks are reproducible and a resumed run draws the same ones.

    masks = BatchMasker(32, patch_size=4)(n=256, generator)  # (256, 64) bool, True = masked
"""
from __future__ import annotations

import math
import random

import torch


class MaskingGenerator:
    """One block-wise mask of a (height, width) patch grid with about `n_masked` patches (never more)."""

    def __init__(self, grid: tuple[int, int], min_block: int = 4, max_block: int | None = None,
                 min_aspect: float = 0.3, max_aspect: float | None = None):
        self.height, self.width = grid
        self.min_block = min_block
        self.max_block = max_block or self.height * self.width
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect or 1 / min_aspect))

    def _add_block(self, mask: torch.Tensor, max_new: int, rng: random.Random) -> int:
        """Try (10 times) to mask one more rectangle adding 1..max_new new patches; the number added."""
        for _ in range(10):
            area = rng.uniform(self.min_block, max_new)
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if w < self.width and h < self.height:
                top, left = rng.randint(0, self.height - h), rng.randint(0, self.width - w)
                block = mask[top:top + h, left:left + w]
                new = h * w - int(block.sum())
                if 0 < new <= max_new:
                    block.fill_(True)
                    return new
        return 0

    def __call__(self, n_masked: int, rng: random.Random) -> torch.Tensor:
        """(height, width) bool with at most n_masked True, grown until n_masked or until no block fits."""
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        count = 0
        while count < n_masked:
            added = self._add_block(mask, min(n_masked - count, self.max_block), rng)
            if added == 0:
                break
            count += added
        return mask


def max_block_patches(image_size: int, patch_size: int, ratio: float = 0.5) -> int:
    """The largest block a mask may add at once: dinov2's train.py, to the letter and in its order of operations,

        max_num_patches = 0.5 * img_size // patch_size * img_size // patch_size,

    which floors twice: 666 for 518 px at patch 14 (37 x 37 = 1369 patches), not half of 1369."""
    return int(ratio * image_size // patch_size * image_size // patch_size)


class BatchMasker:
    """Masks for n global crops of `image_size` px: round(n * probability) of them (at least 1 when
    probability > 0) with ratios spread over (ratio_min, ratio_max), the rest unmasked, in random order.
    (n, h*w) bool, h = w = image_size // patch_size."""

    def __init__(self, image_size: int, patch_size: int, probability: float = 0.5, ratio_min: float = 0.1,
                 ratio_max: float = 0.5, min_block: int = 4):
        grid = image_size // patch_size
        self.grid, self.probability, self.ratios = (grid, grid), probability, (ratio_min, ratio_max)
        self.generator = MaskingGenerator(self.grid, min_block=min_block,
                                          max_block=max_block_patches(image_size, patch_size, ratio_max))

    def n_masked_crops(self, n: int) -> int:
        # dinov2 takes int(n * p); at least one here, so that every step trains the mask token (DDP needs a gradient
        # for every parameter) — the same number whenever n * p >= 1
        return max(1, int(n * self.probability)) if self.probability > 0 else 0

    def __call__(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator,
                                 device=generator.device if generator is not None else "cpu"))
        rng = random.Random(seed)
        n_patches = self.grid[0] * self.grid[1]
        k = self.n_masked_crops(n)
        bounds = torch.linspace(*self.ratios, k + 1).tolist()
        masks = [self.generator(int(n_patches * rng.uniform(bounds[i], bounds[i + 1])), rng) for i in range(k)]
        masks += [torch.zeros(self.grid, dtype=torch.bool)] * (n - k)
        rng.shuffle(masks)
        return torch.stack(masks).flatten(1)
