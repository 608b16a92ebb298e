"""DINOv2's implementation tricks (lesson 7): sequence packing and efficient stochastic depth."""
import pytest
import torch
from timm.models.vision_transformer import Block

from ssl_lessons.backbones import ViTBackbone
from ssl_lessons.packing import block_diagonal_mask, pack_sequences, unpack_sequences
from ssl_lessons.stochastic_depth import SubsetDropPathBlock, drop_add_residual


pytestmark = pytest.mark.numerics  # also run with other kernels and threads (make test)


def test_packing_groups_crops_and_unpacks_to_the_same_tensors():
    g = torch.Generator().manual_seed(0)
    big, small = torch.randn(6, 5, 4, generator=g), torch.randn(12, 2, 4, generator=g)  # 2B global, 4B local, B=3
    packed, mask, layout = pack_sequences([big, small])
    assert layout.rows == 6 and packed.shape == (6, 5 + 2 * 2, 4)  # each row: 1 global crop and 2 local crops
    assert torch.equal(packed[1, :5], big[1]) and torch.equal(packed[1, 5:7], small[2]) \
        and torch.equal(packed[1, 7:], small[3])
    back = unpack_sequences(packed, layout)
    assert torch.equal(back[0], big) and torch.equal(back[1], small)
    assert mask.shape == (9, 9) and mask.sum(dim=1).tolist() == [5] * 5 + [2] * 4  # each token sees its own crop
    assert torch.equal(mask, block_diagonal_mask(layout)) and not mask[0, 5] and mask[5, 6] and not mask[6, 7]


def test_a_packed_forward_equals_separate_forwards_per_crop_size():
    torch.manual_seed(0)
    plain = ViTBackbone(32, patch_size=8, embed_dim=32, depth=2, num_heads=2, register_tokens=2, mask_token=True)
    packed = ViTBackbone(32, patch_size=8, embed_dim=32, depth=2, num_heads=2, register_tokens=2, mask_token=True,
                         packing=True)
    packed.load_state_dict(plain.state_dict())
    g = torch.Generator().manual_seed(1)
    crops = [torch.randn(6, 3, 32, 32, generator=g), torch.randn(12, 3, 16, 16, generator=g)]
    masks = [torch.rand(6, 16, generator=g) < 0.3, None]
    separate, together = plain.forward_tokens(crops, masks), packed.forward_tokens(crops, masks)
    for a, b in zip(separate, together):
        for key in ("cls", "patch", "pooled"):
            assert a[key].shape == b[key].shape
            assert torch.allclose(a[key], b[key], atol=1e-5), key
    # without the mask, the crops would see each other: the outputs change
    from ssl_lessons.packing import pack_sequences as pack
    tokens, _, layout = pack([packed._embed(x, m) for x, m in zip(crops, masks)])
    for block in packed.vit.blocks:
        tokens = block(tokens)
    assert not torch.allclose(unpack_sequences(packed.vit.norm(tokens), layout)[0][:, 0], together[0]["cls"], atol=1e-3)


def test_efficient_stochastic_depth_in_eval_mode_is_the_plain_block_exactly():
    torch.manual_seed(0)
    subset = SubsetDropPathBlock(16, 2, drop_path=0.4, init_values=0.1)
    plain = Block(16, 2, drop_path=0.4, init_values=0.1)
    plain.load_state_dict(subset.state_dict())
    x = torch.randn(8, 5, 16)
    assert torch.equal(subset.eval()(x), plain.eval()(x))


def test_efficient_stochastic_depth_computes_the_kept_samples_only_and_scales_them():
    x = torch.randn(10, 3, 4)
    seen = []

    def branch(t):
        seen.append(len(t))
        return torch.ones_like(t)

    out = drop_add_residual(x, branch, drop_ratio=0.4)
    assert seen == [6]  # floor(10 * 0.6) samples reach the branch
    changed = (out != x).flatten(1).any(dim=1)
    assert changed.sum() == 6
    assert torch.allclose(out[changed] - x[changed], torch.full((6, 3, 4), 10 / 6))  # scaled by B / S


def test_efficient_stochastic_depth_equals_the_full_block_in_expectation():
    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(8, 3, generator=g), torch.randn(3, 3, generator=g)
    f = lambda t: torch.tanh(t @ weight)  # noqa: E731
    draws = 4000
    mean = sum(drop_add_residual(x, f, 0.5, generator=g) for _ in range(draws)) / draws
    # each entry is x + (B/S) f I with I ~ Bernoulli(S/B): variance f^2 (B/S - 1) = f^2 here (B = 8, S = 4)
    bound = 5 * f(x).abs() / draws ** 0.5 + 1e-6
    assert ((mean - (x + f(x))).abs() <= bound).all()


def test_training_with_efficient_stochastic_depth_through_the_backbone():
    torch.manual_seed(0)
    net = ViTBackbone(32, patch_size=8, embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.5,
                      efficient_drop_path=True)
    assert all(isinstance(b, SubsetDropPathBlock) for b in net.vit.blocks)
    x = torch.randn(8, 3, 32, 32)
    loss = net.train()(x).pow(2).mean()
    loss.backward()
    assert all(p.grad is not None for p in net.vit.blocks.parameters())
    assert torch.equal(net.eval()(x), net.eval()(x))  # deterministic in eval
    with pytest.raises(AssertionError):
        torch.testing.assert_close(net.train()(x), net.train()(x))  # random in training
