import pytest
import torch

from ssl_lessons.backbones import ViTBackbone, build_backbone


pytestmark = pytest.mark.numerics  # also run with other kernels and threads (make test)


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


def test_forward_tokens_gives_cls_patch_and_pooled_in_one_pass_equal_to_timm():
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    for pool in ("avg", "token"):
        vit = ViTBackbone(patch_size=4, embed_dim=32, depth=2, num_heads=2, global_pool=pool).eval()
        out = vit.forward_tokens(x)
        assert out["cls"].shape == (3, 32) and out["patch"].shape == (3, 64, 32)
        assert torch.allclose(out["pooled"], vit.vit(x), atol=1e-6)  # timm's own forward
        tokens = vit.vit.forward_features(x)
        assert torch.allclose(out["patch"], tokens[:, 1:], atol=1e-6) and torch.allclose(out["cls"], tokens[:, 0])


def test_forward_tokens_of_a_list_is_one_pass_per_size():
    torch.manual_seed(0)
    vit = ViTBackbone(patch_size=8, embed_dim=32, depth=1, num_heads=2).eval()
    big, small = torch.randn(4, 3, 32, 32), torch.randn(6, 3, 16, 16)
    calls = []
    hook = vit.vit.patch_embed.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    out = vit.forward_tokens([big, small])
    hook.remove()
    assert calls == [4, 6]
    assert out[1]["patch"].shape == (6, 4, 32)  # 16 px crops: a 2x2 grid, position embeddings resampled
    assert torch.allclose(out[0]["pooled"], vit(big), atol=1e-6) and torch.allclose(out[1]["pooled"], vit(small),
                                                                                      atol=1e-6)


def test_masked_patches_are_replaced_by_the_learned_mask_token():
    torch.manual_seed(0)
    vit = ViTBackbone(patch_size=8, embed_dim=32, depth=2, num_heads=2, mask_token=True).eval()
    with torch.no_grad():
        vit.mask_token.normal_()
    x = torch.randn(2, 3, 32, 32)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[:, :4] = True  # the first row of patches (8 px high)
    changed = x.clone()
    changed[:, :, :8] = torch.randn(2, 3, 8, 32)  # other pixels exactly where the patches are masked
    a, b = vit.forward_tokens(x, masks), vit.forward_tokens(changed, masks)
    assert torch.allclose(a["patch"], b["patch"], atol=1e-6)  # what is masked is not seen
    assert not torch.allclose(vit.forward_tokens(x)["patch"], a["patch"])
    assert torch.allclose(vit.forward_tokens(x, torch.zeros_like(masks))["patch"], vit.forward_tokens(x)["patch"])
    a["cls"].sum().backward()
    assert vit.mask_token.grad is not None and vit.mask_token.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="no mask token"):
        ViTBackbone(patch_size=8, embed_dim=32, depth=1, num_heads=2).forward_tokens(x, masks)


def test_config_wires_drop_path_layerscale_and_registers_into_timm():
    from ssl_lessons.backbones import backbone_from_config
    from ssl_lessons.config import make_config
    cfg = make_config("smoke", {"drop_path_rate": "0.1", "layerscale_init": "1e-5", "register_tokens": "4"})
    vit = backbone_from_config(cfg)
    assert vit.num_prefix_tokens == 5 and vit.vit.reg_token.shape == (1, 4, cfg.embed_dim)
    assert torch.allclose(vit.vit.blocks[0].ls1.gamma, torch.full((cfg.embed_dim,), 1e-5))
    assert vit.vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert vit.forward_tokens(torch.randn(2, 3, 32, 32))["patch"].shape == (2, 16, cfg.embed_dim)  # registers cut


def test_resnet_tokens_are_its_last_feature_map_and_refuse_masks():
    net = build_backbone("resnet18").eval()
    x = torch.randn(2, 3, 32, 32)
    out = net.forward_tokens(x)
    assert out["patch"].shape == (2, 16, 512)  # 32 px / 8 (three stride-2 stages) = 4 x 4
    assert torch.allclose(out["pooled"], net(x), atol=1e-5)
    with pytest.raises(ValueError, match="need a ViT"):
        net.forward_tokens(x, torch.zeros(2, 16, dtype=torch.bool))
