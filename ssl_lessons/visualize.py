"""Pictures: training curves, augmentation grids, t-SNE of embeddings, attention maps, patch PCA, mosaics, rows of
images (neighbours, copies, curation examples) and grouped histograms."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from .augment import unnormalize


def plot_training(history: list[dict], evals: list[dict] | None = None, title: str = "", final: dict | None = None,
                  baselines: dict | None = None):
    """Loss, learning rate and k-NN top-1 against epochs. baselines: {"name": top1} drawn as dashed lines."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    epochs = [h["epoch"] for h in history]
    axes[0].plot(epochs, [h["loss"] for h in history], lw=1)
    axes[0].set(xlabel="epoch", ylabel="loss", title="training loss")
    axes[1].plot(epochs, [h["lr"] for h in history], lw=1)
    axes[1].set(xlabel="epoch", ylabel="learning rate", title="schedule")
    ax = axes[2]
    if evals:
        ax.plot([e["epoch"] for e in evals], [e["knn_top1"] for e in evals], "o-",
                label=f"k-NN during training ({evals[0]['bank']:,} bank)")
    if final:
        ax.plot([final["epochs"]], [final["knn_top1"]], "r*", ms=12, label=f"final k-NN {final['knn_top1']:.1f}% ({final['bank']:,} bank)")
    for i, (name, value) in enumerate((baselines or {}).items()):
        ax.axhline(value, ls="--", lw=1, color=f"C{i + 2}", label=f"{name} {value:.1f}%")
    ax.set(xlabel="epoch", ylabel="top-1 (%)", title="k-NN accuracy")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def show_views(images: torch.Tensor, views: list[torch.Tensor], n: int = 8):
    """A grid: row 0 the original uint8 images, one row per view (standardised float tensors)."""
    rows = [images[:n].float() / 255] + [unnormalize(v[:n].float()) for v in views]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.4 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n):
            axes[r, c].imshow(row[c].permute(1, 2, 0).cpu().numpy())
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel("image" if r == 0 else f"view {r}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_tsne(features: torch.Tensor, labels: torch.Tensor, classes: list[str], title: str = "", seed: int = 0,
              ax=None):
    """2-D t-SNE (scikit-learn) of features (N, D), coloured by class."""
    from sklearn.manifold import TSNE

    xy = TSNE(n_components=2, init="pca", perplexity=30, random_state=seed).fit_transform(features.numpy())
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 5))
    labels = labels.numpy()
    for c, name in enumerate(classes):
        pts = xy[labels == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=3, color=plt.cm.tab10(c), label=name)
    ax.set(xticks=[], yticks=[], title=title)
    ax.legend(markerscale=4, fontsize=7, loc="best")
    return ax.figure


def plot_bars(values: dict[str, float], title: str = "", ylabel: str = "top-1 (%)", ax=None):
    """A labelled bar chart, e.g. {"raw pixels": 45.8, "random ViT": 28.0, "SimCLR": 52.0}."""
    if ax is None:
        _, ax = plt.subplots(figsize=(1.3 * len(values) + 2, 3.2))
    x = np.arange(len(values))
    bars = ax.bar(x, list(values.values()), color=[f"C{i}" for i in range(len(values))])
    ax.bar_label(bars, fmt="%.1f")
    ax.margins(y=0.12)  # room above (and below) the tallest bars for their labels
    widest = max(len(line) for label in values for line in label.split("\n"))
    slanted = widest > 14  # longer lines would run into their neighbours' at this width
    ax.set_xticks(x, list(values.keys()), fontsize=9, rotation=20 if slanted else 0, ha="right" if slanted else "center")
    ax.set(ylabel=ylabel, title=title)
    if slanted:
        ax.figure.tight_layout()  # room below the axes for the slanted labels
    return ax.figure


def plot_attention_maps(images: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor | None = None,
                        title: str = "", mean=None, std=None):
    """One row per image: the image, then each head's CLS attention (upsampled to the image), then - if masks
    are given - the patches that keep 60 % of each head's attention, coloured by head over the image.

    images: (B, 3, H, W) standardised floats (un-normalised with mean/std, CIFAR-10's by default) or uint8;
    maps: (B, heads, H, W); masks: (B, heads, H, W) booleans."""
    b, heads = maps.shape[:2]
    if images.dtype == torch.uint8:
        pictures = images.float() / 255
    else:
        kwargs = {} if mean is None else {"mean": mean, "std": std}
        pictures = unnormalize(images.float(), **kwargs)
    pictures = pictures.permute(0, 2, 3, 1).cpu().numpy()
    cols = 1 + heads + (masks is not None)
    fig, axes = plt.subplots(b, cols, figsize=(1.45 * cols, 1.5 * b), squeeze=False)
    for i in range(b):
        axes[i, 0].imshow(pictures[i])
        for h in range(heads):
            axes[i, 1 + h].imshow(maps[i, h].cpu().numpy(), cmap="inferno")
            if i == 0:
                axes[i, 1 + h].set_title(f"head {h}", fontsize=8)
        if masks is not None:
            overlay = pictures[i] * 0.35
            for h in range(heads):
                colour = np.array(plt.cm.tab10(h % 10)[:3])
                overlay = np.where(masks[i, h].cpu().numpy()[..., None], 0.5 * overlay + 0.5 * colour, overlay)
            axes[i, -1].imshow(overlay.clip(0, 1))
            if i == 0:
                axes[i, -1].set_title("60 % mass", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_masked_crops(crops: torch.Tensor, masks: torch.Tensor, patch_size: int, n: int = 8, title: str = ""):
    """Global crops (B, 3, H, W standardised) and their patch masks (B, N bool): each crop above, the same crop
    with its masked patches greyed out below, and the fraction masked."""
    pictures = unnormalize(crops[:n].float()).permute(0, 2, 3, 1).cpu().numpy()
    grid = crops.shape[-1] // patch_size
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n, 2.8), squeeze=False)
    for i in range(n):
        mask = masks[i].view(grid, grid).cpu().numpy().repeat(patch_size, 0).repeat(patch_size, 1)
        axes[0, i].imshow(pictures[i].clip(0, 1))
        axes[1, i].imshow(np.where(mask[..., None], 0.5, pictures[i]).clip(0, 1))
        axes[1, i].set_title(f"{masks[i].float().mean():.0%} masked", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_patch_pca(images_u8: torch.Tensor, results: dict, title: str = ""):
    """One row of images, then per backbone (results: {name: pca.PatchPCA}) a row of its patch-PCA colours,
    upsampled (nearest) to the image: black = background, equal colours = similar patch features."""
    n = len(images_u8)
    fig, axes = plt.subplots(1 + len(results), n, figsize=(1.3 * n, 1.35 * (1 + len(results))), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(images_u8[i].permute(1, 2, 0).cpu().numpy())
    for row, (name, result) in enumerate(results.items(), start=1):
        for i in range(n):
            axes[row, i].imshow(result.rgb[i].cpu().numpy(), interpolation="nearest")
        axes[row, 0].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_mosaics(images_u8: torch.Tensor, labels: torch.Tensor, classes: list[str], predictions: dict | None = None,
                 title: str = ""):
    """Mosaics (n, 3, H, W uint8) above their patch labels (n, h*w), one colour per class (tab10), and below them
    any {name: predicted patch labels (n, h*w)}; a legend names the classes."""
    rows = {"patch labels": labels, **(predictions or {})}
    n, grid = len(images_u8), int(round(labels.shape[1] ** 0.5))
    fig, axes = plt.subplots(1 + len(rows), n, figsize=(1.3 * n, 1.4 * (1 + len(rows))), squeeze=False)
    colours = plt.get_cmap("tab10")
    for i in range(n):
        axes[0, i].imshow(images_u8[i].permute(1, 2, 0).cpu().numpy())
        for row, values in enumerate(rows.values(), start=1):
            axes[row, i].imshow(colours(values[i].view(grid, grid).cpu().numpy() % 10), interpolation="nearest")
    for row, name in enumerate(rows, start=1):
        axes[row, 0].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours(c)) for c in range(len(classes))]
    fig.legend(handles, classes, loc="lower center", ncol=len(classes), fontsize=7, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def plot_image_rows(rows: dict[str, torch.Tensor], captions: dict[str, list[str]] | None = None,
                    frames: dict[str, list] | None = None, title: str = "", scale: float = 1.1):
    """Rows of uint8 images (n, 3, H, W), one row per key, named on the left: e.g. a query and its neighbours per
    descriptor. captions: a line under each image of a row. frames: per image True (green), False (red) or None
    (no frame), e.g. whether a neighbour is of the query's class."""
    width = max(len(images) for images in rows.values())
    fig, axes = plt.subplots(len(rows), width, figsize=(scale * width + 0.8, scale * 1.15 * len(rows) + 0.4),
                             squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c in range(width):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            if c >= len(images):
                ax.axis("off")
                continue
            ax.imshow(images[c].permute(1, 2, 0).cpu().numpy())
            frame = (frames or {}).get(name, [None] * len(images))[c]
            for spine in ax.spines.values():
                spine.set_visible(frame is not None)
                if frame is not None:
                    spine.set_color("tab:green" if frame else "tab:red")
                    spine.set_linewidth(3)
            if captions and name in captions:
                ax.set_xlabel(captions[name][c], fontsize=7)
        axes[r, 0].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_histograms(histograms: dict[str, np.ndarray], labels: list[str], title: str = "", ylabel: str = "images",
                    ax=None):
    """Grouped bars: one group per label (e.g. a class), one bar per named histogram (e.g. a curation stage)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(min(12.0, max(6.0, 0.3 * len(labels) * len(histograms))), 3.4))
    x = np.arange(len(labels))
    width = 0.8 / len(histograms)
    for i, (name, counts) in enumerate(histograms.items()):
        ax.bar(x + (i - (len(histograms) - 1) / 2) * width, counts, width, label=name, color=f"C{i}")
    ax.set_xticks(x, labels, fontsize=8, rotation=30, ha="right")
    ax.set(ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


def plot_similarity_maps(images_u8: torch.Tensor, maps: dict[str, torch.Tensor], query: tuple[int, int],
                         patch_size: int, title: str = ""):
    """One row of images with the query patch outlined, then per backbone (maps: {name: (n, h, w) cosine
    similarities, similarity.similarity_maps}) a row of its maps on one colour scale, 0 (and below) to 1."""
    n = len(images_u8)
    fig, axes = plt.subplots(1 + len(maps), n, figsize=(1.3 * n, 1.35 * (1 + len(maps))), squeeze=False)
    row, col = query
    for i in range(n):
        axes[0, i].imshow(images_u8[i].permute(1, 2, 0).cpu().numpy())
        axes[0, i].add_patch(plt.Rectangle((col * patch_size - 0.5, row * patch_size - 0.5), patch_size, patch_size,
                                           fill=False, edgecolor="red", linewidth=1.5))
    image = None
    for r, (name, m) in enumerate(maps.items(), start=1):
        for i in range(n):
            image = axes[r, i].imshow(m[i].cpu().numpy(), cmap="inferno", vmin=0.0, vmax=1.0, interpolation="nearest")
        axes[r, 0].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    if image is not None:
        fig.colorbar(image, ax=axes[1:].ravel().tolist(), shrink=0.8, label="cosine to the red patch")
    return fig
