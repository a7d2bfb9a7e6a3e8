"""agentfast.nn.MultiheadAttention in torch's other execution modes, against torch's class:
TorchScript (the module, a TransformerEncoderLayer holding it, save/load), torch.compile with
fullgraph=True (no graph breaks, so no host syncs either), nested tensors, and gradcheck /
gradgradcheck in float64. Shapes are small and compiles few, to keep CI quick."""

from __future__ import annotations

import io

import pytest
import torch

from tests.mha_helpers import (
    TorchMultiheadAttention,
    compare_grads,
    make_pair,
    masks,
    one_thread,  # noqa: F401  (autouse fixture)
    run,
)

from agentfast.nn import MultiheadAttention

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated"),
    pytest.mark.filterwarnings("ignore:`torch.jit.save` is deprecated"),
    pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated"),
    pytest.mark.filterwarnings("ignore:Support for mismatched"),
    pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype"),
]

E, H, B, L = 8, 2, 3, 6
TOL = dict(atol=2e-5, rtol=1e-4)


def self_attention_input(batch_first=True, dtype=torch.float32, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((B, L, E) if batch_first else (L, B, E), generator=generator, dtype=dtype)


def encoder_layers(**kwargs):
    """torch's TransformerEncoderLayer, and one whose self_attn is the drop-in (same weights)."""
    torch.manual_seed(0)
    theirs = torch.nn.TransformerEncoderLayer(E, H, 16, dropout=0.0, **kwargs)
    ours = torch.nn.TransformerEncoderLayer(E, H, 16, dropout=0.0, **kwargs)
    ours.self_attn = MultiheadAttention(E, H, batch_first=kwargs.get("batch_first", False))
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


# -- TorchScript --------------------------------------------------------------------------------

SCRIPT_MASKS = [("none", "none"), ("causal_hint", "right_bool"), ("bool_2d", "random_bool"),
                ("float_3d", "random_float"), ("causal_float", "right_float")]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kwargs", [{}, {"add_bias_kv": True, "add_zero_attn": True}, {"bias": False}],
                         ids=["default", "bias_kv_zero_attn", "no_bias"])
def test_torchscript_module_matches_torch(kwargs, batch_first):
    theirs, ours = make_pair(E, H, batch_first=batch_first, **kwargs)
    scripted = torch.jit.script(ours)
    query = self_attention_input(batch_first)
    for attn, padding in SCRIPT_MASKS:
        call = masks(attn, padding, L, L, B, H)
        for need_weights in (False, "per_head"):
            expected, expected_grads = run(theirs, query, query, query, call, True, need_weights)
            got, got_grads = run(scripted, query, query, query, call, True, need_weights)
            torch.testing.assert_close(got[0], expected[0], **TOL)
            if need_weights:
                torch.testing.assert_close(got[1], expected[1], **TOL)
            compare_grads(got_grads, expected_grads, **TOL)


def test_torchscript_cross_attention_kdim_vdim_and_save_load():
    theirs, ours = make_pair(E, H, kdim=5, vdim=3)
    scripted = torch.jit.script(ours)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    generator = torch.Generator().manual_seed(2)
    query, key, value = torch.randn(4, B, E, generator=generator), torch.randn(7, B, 5), torch.randn(7, B, 3)
    padding = torch.arange(7)[None] >= torch.tensor([7, 3, 5])[:, None]
    expected = theirs(query, key, value, key_padding_mask=padding)
    for module in (scripted, loaded):
        got = module(query, key, value, key_padding_mask=padding)
        torch.testing.assert_close(got[0], expected[0], **TOL)
        torch.testing.assert_close(got[1], expected[1], **TOL)


def test_torchscript_refuses_the_agentfast_extras_clearly():
    _, ours = make_pair(E, H, batch_first=True)
    scripted = torch.jit.script(ours)
    query = self_attention_input()
    with pytest.raises(Exception, match="not available under TorchScript"):
        scripted(query, query, query, need_weights=False, seq_lens=torch.tensor([6, 3, 2]))


@pytest.mark.parametrize("mode", ["train", "eval_no_grad"])
def test_torchscript_transformer_encoder_layer_holding_it(mode):
    """torch.jit.script of torch's encoder layer with the drop-in inside: training runs the
    drop-in's scripted forward, eval without gradients torch's fused kernel on its weights."""
    theirs, ours = encoder_layers(batch_first=True)
    scripted = torch.jit.script(ours)
    src = self_attention_input()
    padding = torch.arange(L)[None] >= torch.tensor([6, 4, 2])[:, None]
    causal = torch.ones(L, L, dtype=torch.bool).triu(1)
    for layer in (theirs, scripted):
        layer.train(mode == "train")
    with torch.set_grad_enabled(mode == "train"):
        expected = theirs(src, src_mask=causal, src_key_padding_mask=padding)
        got = scripted(src, src_mask=causal, src_key_padding_mask=padding)
    torch.testing.assert_close(got[~padding], expected[~padding], **TOL)


# -- torch.compile(fullgraph=True) --------------------------------------------------------------


class RecordGraphs:
    """A torch.compile backend that keeps the graphs it is given, then runs them as traced."""

    def __init__(self):
        self.graphs = []

    def __call__(self, graph_module, example_inputs):
        self.graphs.append(graph_module)
        return graph_module.forward

    def calls_agentfast(self) -> bool:
        return any("agentfast" in str(node.target) for g in self.graphs for node in g.graph.nodes)


def test_compile_fullgraph_bool_padding_runs_the_fast_kernels():
    """A bool key_padding_mask (not right padding) with is_causal compiles to one graph, with no
    look at mask values, and the graph calls agentfast's kernel (padding as agents); outputs
    and gradients match torch's class given the explicit causal mask."""
    torch._dynamo.reset()
    theirs, ours = make_pair(E, H, batch_first=True)
    query = self_attention_input()
    padding = torch.tensor([[False, True, False, False, True, False]] * 2 + [[False] * 4 + [True] * 2])
    backend = RecordGraphs()
    compiled = torch.compile(ours, fullgraph=True, dynamic=False, backend=backend)
    call = dict(key_padding_mask=padding, is_causal=True)
    got, got_grads = run(compiled, query, query, query, call, True, False)
    assert backend.calls_agentfast()
    causal = torch.ones(L, L, dtype=torch.bool).triu(1)
    expected, expected_grads = run(theirs, query, query, query, dict(call, attn_mask=causal), True, False)
    torch.testing.assert_close(got[0], expected[0], **TOL)
    compare_grads(got_grads, expected_grads, **TOL)


def test_compile_fullgraph_float_masks_and_weights():
    """Float masks (any values) and need_weights=True: the dense path, still one graph."""
    torch._dynamo.reset()
    theirs, ours = make_pair(E, H)
    query = self_attention_input(batch_first=False)
    call = masks("float_2d", "right_float", L, L, B, H)
    compiled = torch.compile(ours, fullgraph=True, dynamic=False, backend="aot_eager")
    got, got_grads = run(compiled, query, query, query, call, True, "per_head")
    expected, expected_grads = run(theirs, query, query, query, call, True, "per_head")
    torch.testing.assert_close(got[0], expected[0], **TOL)
    torch.testing.assert_close(got[1], expected[1], **TOL)
    compare_grads(got_grads, expected_grads, **TOL)


def test_compile_fullgraph_transformer_encoder_layer_training_step():
    torch._dynamo.reset()
    theirs, ours = encoder_layers(batch_first=True)
    src = self_attention_input()
    padding = torch.arange(L)[None] >= torch.tensor([6, 4, 2])[:, None]
    causal = torch.ones(L, L, dtype=torch.bool).triu(1)  # bool like the padding: torch warns (a graph break) on a mix
    compiled = torch.compile(ours, fullgraph=True, dynamic=False, backend="aot_eager")
    got = compiled(src, src_mask=causal, src_key_padding_mask=padding, is_causal=True)
    expected = theirs(src, src_mask=causal, src_key_padding_mask=padding, is_causal=True)
    torch.testing.assert_close(got[~padding], expected[~padding], **TOL)
    got[~padding].sum().backward()
    expected[~padding].sum().backward()
    for (name, theirs_param), ours_param in zip(theirs.named_parameters(), ours.parameters()):
        torch.testing.assert_close(ours_param.grad, theirs_param.grad, msg=name, **TOL)


# -- nested tensors -----------------------------------------------------------------------------


def nested_input(seed=4):
    generator = torch.Generator().manual_seed(seed)
    return torch.nested.nested_tensor([torch.randn(n, E, generator=generator) for n in (3, 6, 1)])


@pytest.mark.parametrize("need_weights", [False, True])
def test_nested_tensors_in_eval_without_gradients_match_torch(need_weights):
    theirs, ours = make_pair(E, H, batch_first=True)
    theirs.eval(), ours.eval()
    nested = nested_input()
    with torch.no_grad():
        expected = theirs(nested, nested, nested, need_weights=need_weights)
        got = ours(nested, nested, nested, need_weights=need_weights)
    assert got[0].is_nested
    for a, b in zip(got[0].unbind(), expected[0].unbind()):
        torch.testing.assert_close(a, b, **TOL)
    assert (got[1] is None) == (expected[1] is None)


@pytest.mark.parametrize("mode", ["train", "eval_with_grad"])
def test_nested_tensors_elsewhere_raise_like_torch(mode):
    theirs, ours = make_pair(E, H, batch_first=True)
    nested = nested_input()
    for module in (theirs, ours):
        module.train(mode == "train")
    with pytest.raises(AssertionError, match="NestedTensor outside of its fast path"):
        theirs(nested, nested, nested)
    with pytest.raises(AssertionError, match="NestedTensor outside of its fast path"):
        ours(nested, nested, nested)


def test_nested_tensors_refuse_the_agentfast_extras():
    _, ours = make_pair(E, H, batch_first=True)
    nested = nested_input()
    with torch.no_grad(), pytest.raises(ValueError, match="do not apply to nested tensors"):
        ours.eval()(nested, nested, nested, seq_lens=torch.tensor([3, 6, 1]))


# -- gradcheck / gradgradcheck in float64 ------------------------------------------------------


def _as_function(module, kwargs):
    """The module as a function of its query and all its parameters (torch.func.functional_call),
    so gradcheck covers the weights too."""
    names = [name for name, _ in module.named_parameters()]

    def function(query, *params):
        out, weights = torch.func.functional_call(module, dict(zip(names, params)), (query, query, query), kwargs)
        return out if weights is None else (out, weights)

    return function, [p.detach().clone().requires_grad_(True) for p in module.parameters()]


GRADCHECK_CASES = {
    # name: (module kwargs, forward masks (attn, padding), forward kwargs)
    "weights_causal_padding": ({}, ("causal_bool", "right_bool"), dict(need_weights=True)),
    "weights_per_head_float_mask": ({"add_bias_kv": True}, ("float_2d", "random_bool"),
                                    dict(need_weights=True, average_attn_weights=False)),
    "fast_causal_padding_reference": ({"backend": "reference"}, ("causal_hint", "right_bool"), dict(need_weights=False)),
    "fast_agents_padding_reference": ({"backend": "reference"}, ("none", "random_bool"), dict(need_weights=False)),
    "zero_attn_3d_mask": ({"add_zero_attn": True}, ("bool_3d", "none"), dict(need_weights=True)),
}


@pytest.mark.parametrize("case", list(GRADCHECK_CASES))
def test_gradcheck_and_gradgradcheck_float64(case):
    module_kwargs, (attn, padding), forward_kwargs = GRADCHECK_CASES[case]
    module_kwargs = dict(module_kwargs)
    backend = module_kwargs.pop("backend", "auto")
    _, ours = make_pair(4, 2, dtype=torch.float64, batch_first=True, backend=backend, **module_kwargs)
    call = dict(masks(attn, padding, 3, 3, 2, 2, torch.float64), **forward_kwargs)
    function, params = _as_function(ours, call)
    query = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(function, (query, *params))
    assert torch.autograd.gradgradcheck(function, (query, *params))


def test_gradcheck_through_the_compiled_kernel_and_no_silent_double_backward():
    """The default backend's compiled kernel passes gradcheck; its double backward is an
    error that says what to do, never a silently wrong second derivative."""
    _, ours = make_pair(4, 2, dtype=torch.float64, batch_first=True, backend="cpp")
    call = dict(masks("causal_hint", "random_bool", 3, 3, 2, 2, torch.float64), need_weights=False)
    function, params = _as_function(ours, call)
    query = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(function, (query, *params))
    (grad,) = torch.autograd.grad(function(query, *params).sum(), query, create_graph=True)
    with pytest.raises(RuntimeError, match="first-order gradients only.*backend='reference'"):
        grad.sum().backward()


def test_torch_class_is_untouched():
    """The drop-in leaves torch's class as it was (no patching at import)."""
    assert torch.nn.MultiheadAttention is TorchMultiheadAttention
    assert MultiheadAttention.__mro__[1] is TorchMultiheadAttention
