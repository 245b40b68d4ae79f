"""What several families share: the heads of timm's fused ``[q|k|v][head][dim]`` attention and
of the ``[head][q|k|v]`` attention LeViT and EfficientFormer use, the first layer of an MLP or
a conv block, and the modules of a class found in a model."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch import nn

from optimizer.plugin_api.family import ChannelGroup, HeadSlices, head_major, qkv_major


def instances(model: nn.Module, *classes: type) -> Iterator[nn.Module]:
    """The modules of ``model`` that are instances of ``classes``, in ``modules()`` order."""
    return (module for module in model.modules() if isinstance(module, classes))


def first_layer(module: nn.Module) -> nn.Module:
    """The first ``Linear`` or conv inside ``module`` (itself if it is one): the layer whose
    output channels are a block's hidden width (an ``fc1`` that is a conv-norm-act stack)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd)):
            return layer
    raise TypeError(f"{type(module).__name__} has no Linear or conv layer")


def hidden_widths(model: nn.Module, classes: Sequence[type], attribute: str) -> list[ChannelGroup]:
    """One :class:`ChannelGroup` per instance of ``classes``, rooted at the first layer of its
    ``attribute`` (``fc1`` of an MLP, ``conv1_1x1`` of an inverted residual)."""
    return [
        ChannelGroup(block, first_layer(getattr(block, attribute)))
        for block in instances(model, *classes)
    ]


def fused_qkv_heads(attn: nn.Module, per_head: Sequence[tuple[nn.Module, str, int]] = ()):
    """The heads of an attention whose ``qkv`` Linear is laid out ``[q|k|v][head][dim]`` and
    whose ``proj`` takes ``[head][dim]`` (timm's ``Attention``, Swin's ``WindowAttention``)."""
    head_dim = attn.qkv.out_features // (3 * attn.num_heads)
    rows, columns = qkv_major(attn.num_heads, head_dim)

    def update(kept: Sequence[int]) -> None:
        attn.num_heads = len(kept)
        if hasattr(attn, "attn_dim"):  # timm's Attention reshapes its output to attn_dim
            attn.attn_dim = len(kept) * head_dim

    return HeadSlices(
        attn, attn.num_heads, [attn.qkv], [attn.proj], rows, columns, update, per_head
    )


def split_qkv_heads(
    attn: nn.Module, producers: Sequence[nn.Module], consumer: nn.Module
) -> HeadSlices:
    """The heads of LeViT's and EfficientFormer's attention: a projection laid out
    ``[head][q|k|v]`` (``key_dim`` queries and keys, ``val_dim`` values a head), a learned
    ``attention_biases`` row per head, and a cache of it to drop."""
    rows, columns = head_major(2 * attn.key_dim + attn.val_dim, attn.val_dim)

    def update(kept: Sequence[int]) -> None:
        attn.num_heads = len(kept)
        attn.key_attn_dim = attn.key_dim * len(kept)
        attn.val_attn_dim = attn.val_dim * len(kept)
        attn.attention_bias_cache = {}

    return HeadSlices(
        attn,
        attn.num_heads,
        producers,
        [consumer],
        rows,
        columns,
        update,
        [(attn, "attention_biases", 0)],
    )
