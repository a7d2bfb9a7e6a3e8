"""agentfast.nn.MultiheadAttention against torch.nn.MultiheadAttention with the same weights."""

import pytest
import torch

import agentfast.nn.multihead_attention as mha_module
from tests.mha_helpers import one_thread  # noqa: F401  (autouse fixture)
from agentfast.attention import reference_attention
from agentfast.nn import MultiheadAttention

BACKENDS = ["reference", "sdpa"]
EMBED, HEADS, BATCH, LEN = 16, 4, 3, 7
ATOL = 2e-6


def make_pair(backend="auto", **kwargs):
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(EMBED, HEADS, **kwargs).eval()
    ours = MultiheadAttention(EMBED, HEADS, backend=backend, **kwargs).eval()
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def inputs(batch_first, kdim=EMBED, vdim=EMBED, num_keys=LEN):
    torch.manual_seed(1)
    shape = (lambda n, d: (BATCH, n, d)) if batch_first else (lambda n, d: (n, BATCH, d))
    query = torch.randn(*shape(LEN, EMBED))
    if kdim == vdim == EMBED and num_keys == LEN:
        return query, query, query
    return query, torch.randn(*shape(num_keys, kdim)), torch.randn(*shape(num_keys, vdim))


def right_padding(lengths, num_keys=LEN):
    return torch.arange(num_keys)[None, :] >= torch.tensor(lengths)[:, None]


def causal_float_mask(n=LEN):
    return torch.nn.Transformer.generate_square_subsequent_mask(n)


class CountCalls:
    """Wraps agentfast.attention to record that the fast path ran."""

    def __init__(self, monkeypatch):
        self.calls = []
        original = mha_module.attention

        def wrapped(*args, **kwargs):
            self.calls.append(kwargs)
            return original(*args, **kwargs)

        monkeypatch.setattr(mha_module, "attention", wrapped)


@pytest.mark.parametrize("kwargs", [{}, {"kdim": 6, "vdim": 10}, {"bias": False}, {"add_bias_kv": True}])
def test_state_dict_keys_match_torch(kwargs):
    theirs, ours = make_pair(**kwargs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for name, tensor in theirs.state_dict().items():
        assert ours.state_dict()[name].shape == tensor.shape
    # Loading the other way round works too, i.e. old weights and new weights interchange.
    theirs.load_state_dict(ours.state_dict())


MASK_CASES = {
    "none": lambda: {},
    "key_padding_bool": lambda: {"key_padding_mask": right_padding([7, 5, 2])},
    "key_padding_left": lambda: {"key_padding_mask": right_padding([7, 5, 2]).flip(1)},
    "causal_hint": lambda: {"attn_mask": causal_float_mask(), "is_causal": True},
    "causal_bool": lambda: {"attn_mask": causal_float_mask().isinf()},
    "causal_and_padding": lambda: {"attn_mask": causal_float_mask().isinf(), "key_padding_mask": right_padding([7, 5, 2])},
    "arbitrary_float": lambda: {"attn_mask": torch.randn(LEN, LEN)},
    "arbitrary_bool": lambda: {"attn_mask": (torch.rand(LEN, LEN) > 0.7) & ~torch.eye(LEN, dtype=torch.bool)},
    "per_head_float": lambda: {"attn_mask": torch.randn(BATCH * HEADS, LEN, LEN)},
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("case", list(MASK_CASES))
def test_matches_torch_self_attention(backend, batch_first, need_weights, case):
    theirs, ours = make_pair(backend, batch_first=batch_first)
    query, key, value = inputs(batch_first)
    masks = MASK_CASES[case]()
    expected, expected_weights = theirs(query, key, value, need_weights=need_weights, **masks)
    got, got_weights = ours(query, key, value, need_weights=need_weights, **masks)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(got_weights, expected_weights, atol=ATOL, rtol=1e-5)
    else:
        assert got_weights is None


@pytest.mark.parametrize("case", ["none", "key_padding_bool", "causal_hint", "causal_bool", "causal_and_padding"])
def test_contract_masks_take_the_fast_path(monkeypatch, case):
    theirs, ours = make_pair("sdpa", batch_first=True)
    counter = CountCalls(monkeypatch)
    query, key, value = inputs(True)
    masks = MASK_CASES[case]()
    got, _ = ours(query, key, value, need_weights=False, **masks)
    expected, _ = theirs(query, key, value, need_weights=False, **masks)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)
    assert len(counter.calls) == 1
    assert counter.calls[0]["causal"] == ("causal" in case)
    assert (counter.calls[0]["seq_lens"] is not None) == ("padding" in case)


def test_arbitrary_float_mask_falls_back(monkeypatch):
    _, ours = make_pair(batch_first=True)
    counter = CountCalls(monkeypatch)
    query, key, value = inputs(True)
    ours(query, key, value, need_weights=False, attn_mask=torch.randn(LEN, LEN))
    assert counter.calls == []


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kwargs", [{"kdim": 6, "vdim": 10}, {"bias": False}, {"add_bias_kv": True}, {"add_zero_attn": True}])
def test_matches_torch_module_variants(backend, batch_first, kwargs):
    theirs, ours = make_pair(backend, batch_first=batch_first, **kwargs)
    query, key, value = inputs(batch_first, kwargs.get("kdim", EMBED), kwargs.get("vdim", EMBED), num_keys=9)
    padding = right_padding([9, 4, 6], num_keys=9)
    for need_weights in (True, False):
        expected, expected_weights = theirs(query, key, value, key_padding_mask=padding, need_weights=need_weights)
        got, got_weights = ours(query, key, value, key_padding_mask=padding, need_weights=need_weights)
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)
        if need_weights:
            torch.testing.assert_close(got_weights, expected_weights, atol=ATOL, rtol=1e-5)


def test_unbatched_and_per_head_weights_match_torch():
    theirs, ours = make_pair()
    query, key = torch.randn(5, EMBED), torch.randn(9, EMBED)
    expected, expected_weights = theirs(query, key, key, average_attn_weights=False)
    got, got_weights = ours(query, key, key, average_attn_weights=False)
    assert got_weights.shape == (HEADS, 5, 9)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(got_weights, expected_weights, atol=ATOL, rtol=1e-5)


def test_gradients_match_torch():
    theirs, ours = make_pair("sdpa", batch_first=True)
    query, _, _ = inputs(True)
    mask = causal_float_mask().isinf()
    padding = right_padding([7, 5, 2])
    for module in (theirs, ours):
        out, _ = module(query, query, query, attn_mask=mask, key_padding_mask=padding, need_weights=False)
        out[~padding].sum().backward()
    for (name, theirs_param), ours_param in zip(theirs.named_parameters(), ours.parameters()):
        torch.testing.assert_close(ours_param.grad, theirs_param.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("unbatched", [False, True])
def test_self_attention_uses_one_fused_qkv_projection(monkeypatch, batch_first, unbatched):
    """query is key is value: one input projection (and the output one), in every layout."""
    theirs, ours = make_pair("sdpa", batch_first=batch_first)
    query, _, _ = inputs(batch_first)
    if unbatched:
        query = query[0] if batch_first else query[:, 0]
    calls = []
    linear = mha_module.F.linear
    monkeypatch.setattr(mha_module.F, "linear", lambda *a, **k: calls.append(a[1].shape) or linear(*a, **k))
    out, _ = ours(query, query, query, need_weights=False)
    assert calls == [(3 * EMBED, EMBED), (EMBED, EMBED)]  # fused qkv, then out_proj
    expected, _ = theirs(query, query, query, need_weights=False)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("mode", ["train", "eval", "inference"])
def test_swapped_into_torch_transformer_encoder_layer(mode):
    """Swapping the class inside torch's encoder layer: same outputs in training, in eval with
    gradients and under no_grad, where torch's inference fast path runs on our weights."""
    torch.manual_seed(2)
    theirs = torch.nn.TransformerEncoderLayer(EMBED, HEADS, dim_feedforward=32, dropout=0.0, batch_first=True)
    ours = torch.nn.TransformerEncoderLayer(EMBED, HEADS, dim_feedforward=32, dropout=0.0, batch_first=True)
    ours.self_attn = MultiheadAttention(EMBED, HEADS, batch_first=True, backend="sdpa")
    ours.load_state_dict(theirs.state_dict())
    query, _, _ = inputs(True)
    padding, causal = right_padding([7, 5, 2]), causal_float_mask().isinf()
    for layer in (theirs, ours):
        layer.train(mode == "train")
    with torch.inference_mode(mode == "inference"):
        expected = theirs(query, src_mask=causal, src_key_padding_mask=padding)
        got = ours(query, src_mask=causal, src_key_padding_mask=padding)
    torch.testing.assert_close(got[~padding], expected[~padding], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_agent_visibility_and_seq_lens_extras(backend):
    """Extra keyword arguments apply the contract's rule, identically on both paths."""
    _, ours = make_pair(backend, batch_first=True)
    query, _, _ = inputs(True)
    agent_ids = torch.tensor([[0, 1, 0, 1, 2, 2, 0]] * BATCH)
    visibility = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    seq_lens = torch.tensor([7, 4, 6])
    extras = dict(seq_lens=seq_lens, agent_ids=agent_ids, agent_visibility=visibility)
    fast, _ = ours(query, query, query, need_weights=False, is_causal=True, **extras)
    dense, weights = ours(query, query, query, need_weights=True, is_causal=True, **extras)
    torch.testing.assert_close(fast, dense, atol=ATOL, rtol=1e-5)
    # Independent expectation: the reference oracle on projections made here from the weights.
    qkv = torch.nn.functional.linear(query, ours.in_proj_weight, ours.in_proj_bias)
    q, k, v = qkv.view(BATCH, LEN, 3, HEADS, EMBED // HEADS).permute(2, 0, 3, 1, 4)
    expected = reference_attention(
        q, k, v, causal=True, seq_lens=seq_lens, agent_ids=agent_ids,
        visibility=visibility.expand(BATCH, -1, -1),
    )
    expected = ours.out_proj(expected.transpose(1, 2).reshape(BATCH, LEN, EMBED))
    torch.testing.assert_close(fast, expected, atol=ATOL, rtol=1e-5)
    # Weights obey the rule: no weight on keys of invisible agents or past seq_lens.
    assert bool((weights[:, 2, 1] == 0).all())  # agent 0 (position 2) cannot see agent 1
    assert bool((weights[:, 3, 0] > 0).all())  # agent 1 (position 3) sees agent 0
    assert bool((weights[1, :, 4:] == 0).all())


def test_dropout_in_training_runs_and_is_off_in_eval():
    _, ours = make_pair(dropout=0.5, batch_first=True)
    query, _, _ = inputs(True)
    ours.train()
    torch.manual_seed(3)
    first, _ = ours(query, query, query, need_weights=False)
    torch.manual_seed(4)
    second, _ = ours(query, query, query, need_weights=False)
    assert not torch.allclose(first, second)
    ours.eval()
    again = [ours(query, query, query, need_weights=False)[0] for _ in range(2)]
    torch.testing.assert_close(again[0], again[1], atol=0, rtol=0)


def test_bad_inputs_raise_clear_errors():
    _, ours = make_pair(batch_first=True)
    query = torch.randn(2, 5, EMBED)
    with pytest.raises(ValueError, match="features"):
        ours(query, torch.randn(2, 5, 3), torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="key_padding_mask"):
        ours(query, query, query, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="divisible"):
        MultiheadAttention(10, 3)
    with pytest.raises(ValueError, match=r"2-D attn_mask has shape \[4, 5\], but should be \[5, 5\]"):
        ours(query, query, query, attn_mask=torch.zeros(4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"3-D attn_mask has shape \[2, 5, 5\], but should be \[8, 5, 5\]"):
        ours(query, query, query, attn_mask=torch.zeros(2, 5, 5))
    with pytest.raises(ValueError, match="2-D .* or 3-D"):
        ours(query, query, query, attn_mask=torch.zeros(5))
    with pytest.raises(ValueError, match="agent_ids"):
        ours(query, query, query, agent_visibility=torch.ones(2, 2, dtype=torch.bool))


# -- a true drop-in: what code written for torch's class sees -----------------------------------


def test_is_a_torch_multihead_attention_with_torchs_initialisation():
    """isinstance checks (torch's TransformerEncoder/-Layer fast paths make them) recognise it,
    and the same seed gives the same initial weights as torch's class."""
    torch.manual_seed(7)
    theirs = torch.nn.MultiheadAttention(EMBED, HEADS, kdim=6, vdim=10, add_bias_kv=True)
    torch.manual_seed(7)
    ours = MultiheadAttention(EMBED, HEADS, kdim=6, vdim=10, add_bias_kv=True)
    assert isinstance(ours, torch.nn.MultiheadAttention)
    for (name, expected), (other_name, got) in zip(theirs.state_dict().items(), ours.state_dict().items()):
        assert name == other_name
        torch.testing.assert_close(got, expected, atol=0, rtol=0)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype")
@pytest.mark.parametrize("patch", ["torch.nn", "torch.nn.modules.transformer"])
@pytest.mark.parametrize("mode", ["train", "eval", "inference"])
def test_patched_in_as_torch_nn_multihead_attention(monkeypatch, patch, mode):
    """Code that patches the class into torch (so torch's Transformer modules build it) works in
    every mode: no recursion through merge_masks in eval without gradients, torch's encoder
    still takes its nested-tensor fast path, and outputs match torch's unpatched modules."""
    torch.manual_seed(3)
    theirs = torch.nn.Transformer(EMBED, HEADS, 1, 1, 32, dropout=0.0, batch_first=True)
    module = torch.nn if patch == "torch.nn" else torch.nn.modules.transformer
    monkeypatch.setattr(module, "MultiheadAttention", MultiheadAttention)
    monkeypatch.setattr(torch.nn.modules.transformer, "MultiheadAttention", MultiheadAttention)
    ours = torch.nn.Transformer(EMBED, HEADS, 1, 1, 32, dropout=0.0, batch_first=True)
    ours.load_state_dict(theirs.state_dict())
    attentions = [m for m in ours.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    assert len(attentions) == 3 and all(isinstance(m, MultiheadAttention) for m in attentions)
    assert ours.encoder.use_nested_tensor  # the encoder's own checks accepted the drop-in
    src, _, _ = inputs(True)
    tgt = torch.randn(BATCH, 4, EMBED)
    padding = right_padding([7, 5, 2])
    for model in (theirs, ours):
        model.train(mode == "train")
    with torch.inference_mode(mode == "inference"):
        expected = theirs(src, tgt, src_key_padding_mask=padding, memory_key_padding_mask=padding,
                          tgt_mask=causal_float_mask(4), tgt_is_causal=True)
        got = ours(src, tgt, src_key_padding_mask=padding, memory_key_padding_mask=padding,
                   tgt_mask=causal_float_mask(4), tgt_is_causal=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["seq_first", "batch_first", "unbatched"])
@pytest.mark.parametrize("need_weights", [False, True])
def test_output_is_contiguous_in_the_callers_layout(layout, need_weights):
    """torch returns a contiguous output, so callers .view() it; the drop-in does too."""
    theirs, ours = make_pair("auto", batch_first=layout == "batch_first")
    query, _, _ = inputs(layout == "batch_first")
    if layout == "unbatched":
        query = query[:, 0]
    expected, _ = theirs(query, query, query, need_weights=need_weights)
    got, _ = ours(query, query, query, need_weights=need_weights)
    assert got.is_contiguous()
    torch.testing.assert_close(got.view(-1, EMBED), expected.reshape(-1, EMBED), atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("need_weights", [True, False])
def test_float64_modules_compute_in_float64(need_weights):
    """A float64 module with torch's default need_weights=True stays in float64: it agrees with
    torch far below float32's resolution (float32 arithmetic would be ~1e-8 off)."""
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(EMBED, HEADS, dtype=torch.float64)
    ours = MultiheadAttention(EMBED, HEADS, dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict())
    query = torch.randn(LEN, BATCH, EMBED, dtype=torch.float64)
    padding = right_padding([7, 5, 2])
    expected, expected_weights = theirs(query, query, query, key_padding_mask=padding, need_weights=need_weights)
    got, got_weights = ours(query, query, query, key_padding_mask=padding, need_weights=need_weights)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, atol=1e-13, rtol=1e-12)
    if need_weights:
        assert got_weights.dtype == torch.float64
        torch.testing.assert_close(got_weights, expected_weights, atol=1e-13, rtol=1e-12)
