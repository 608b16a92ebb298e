import pytest
import torch

from ssl_lessons.backbones import ViTBackbone, build_backbone


def test_vit_features_patch_tokens_and_attention_shapes():
    vit = ViTBackbone(patch_size=4, embed_dim=48, depth=2, num_heads=3)
    x = torch.randn(2, 3, 32, 32)
    assert vit(x).shape == (2, 48)
    assert vit.patch_tokens(x).shape == (2, 64, 48)
    attn = vit.last_attention(x)
    assert attn.shape == (2, 3, 65, 65)
    assert torch.allclose(attn.sum(-1), torch.ones(2, 3, 65), atol=1e-5) and (attn >= 0).all()
    assert vit.vit.blocks[-1].attn.fused_attn == ViTBackbone(depth=1).vit.blocks[-1].attn.fused_attn  # restored


def test_attention_changes_with_the_image():
    torch.manual_seed(0)
    vit = ViTBackbone(patch_size=8, embed_dim=32, depth=1, num_heads=2)
    a = vit.last_attention(torch.randn(1, 3, 32, 32))
    b = vit.last_attention(torch.randn(1, 3, 32, 32))
    assert not torch.allclose(a, b)


def test_fused_and_unfused_paths_agree_so_extraction_does_not_change_features():
    torch.manual_seed(0)
    vit = ViTBackbone(patch_size=8, embed_dim=32, depth=2, num_heads=2).eval()
    x = torch.randn(2, 3, 32, 32)
    before = vit(x)
    vit.last_attention(x)
    assert torch.allclose(vit(x), before, atol=1e-6)


def test_cifar_resnet18_keeps_resolution_in_the_stem():
    net = build_backbone("resnet18")
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    assert net.net.conv1.kernel_size == (3, 3) and net.net.conv1.stride == (1, 1)


def test_bad_backbone_arguments_are_explained():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ViTBackbone(img_size=32, patch_size=5)
