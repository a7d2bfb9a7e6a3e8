"""An oracle for attention weights: softmax(q k^T / sqrt(D)) over the keys that the mask
rule, written out one entry at a time, allows; and each layer's own q and k, read from its
qkv projection with a forward hook."""

import math

import torch


def rule_mask(num_tokens, token_agents=None, visibility=None, valid=None):
    """bool [N, N]: query i may attend key j (causal, padding, agent visibility), one entry at a time."""
    allowed = torch.zeros(num_tokens, num_tokens, dtype=torch.bool)
    for i in range(num_tokens):
        for j in range(i + 1):
            ok = valid is None or j < valid
            if visibility is not None:
                ok = ok and bool(visibility[token_agents[i], token_agents[j]])
            allowed[i, j] = ok
    return allowed


def softmax_weights(q, k, allowed):
    """softmax of scaled scores over allowed keys; rows with no allowed key are 0."""
    scores = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.nan_to_num(probs, nan=0.0)


def layer_qk(model, run):
    """Each layer's q and k, split from its own qkv projection during ``run()``."""
    seen = []
    hooks = [block.qkv.register_forward_hook(lambda module, args, out: seen.append(out.detach()))
             for block in model.backbone.blocks]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    heads = model.backbone.blocks[0].num_heads
    pairs = []
    for qkv in seen:
        batch, tokens, width = qkv.shape
        q, k, _ = qkv.view(batch, tokens, 3, heads, width // (3 * heads)).permute(2, 0, 3, 1, 4)
        pairs.append((q, k))
    return pairs
