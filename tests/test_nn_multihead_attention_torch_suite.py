"""PyTorch's own test inputs for MultiheadAttention and the Transformer modules, run through
the drop-in and compared with torch's class.

The installed torch ships no ``test/`` folder (no test_nn.py, test_transformers.py or
test_modules.py to import), but it does ship ``torch.testing._internal.common_modules``: the
``ModuleInfo`` entries that torch's ``test_modules.py`` drives, with their sample generators
(``module_inputs_torch_nn_MultiheadAttention``, ``..._TransformerEncoderLayer``, ...) and
reference functions. These tests take torch's samples as they are and check what torch's
TestModule checks, with torch's class as the oracle: forward outputs, agreement with each
sample's reference_fn (unbatched inputs, the encoder layer's inference fast path), gradients,
non-contiguous inputs, save/load, and for MultiheadAttention gradcheck and gradgradcheck.
The Transformer modules build the drop-in themselves, patched in as torch's class.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

from tests.mha_helpers import TorchMultiheadAttention, one_thread  # noqa: F401  (autouse fixture)

from agentfast.nn import MultiheadAttention

pytestmark = [
    pytest.mark.filterwarnings("ignore:Support for mismatched"),
    pytest.mark.filterwarnings("ignore:enable_nested_tensor is True"),
    pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype"),
]

MODULES = ["MultiheadAttention", "TransformerEncoderLayer", "TransformerEncoder", "TransformerDecoderLayer",
           "Transformer"]
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-8)}


@pytest.fixture(scope="module")
def module_infos():
    """torch's ModuleInfo entries for the five classes. Importing torch's test helpers has side
    effects meant for torch's own test runs (it freezes torch.backends flags, wraps TorchScript
    calls); they are undone here so the rest of the suite runs as before."""
    pytest.importorskip("expecttest", reason="torch's test helpers need expecttest (pip install -e .[test])")
    frozen_before = torch.backends.flags_frozen()
    script_calls = torch._C.ScriptFunction.__call__, torch._C.ScriptMethod.__call__
    try:
        from torch.testing._internal.common_modules import module_db
    finally:
        if not frozen_before:  # torch has disable_global_flags() but no way back: set its module global
            torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
        torch._C.ScriptFunction.__call__, torch._C.ScriptMethod.__call__ = script_calls
    assert torch.backends.flags_frozen() == frozen_before
    infos = {info.module_cls.__name__: info for info in module_db if info.module_cls.__name__ in MODULES}
    assert sorted(infos) == sorted(MODULES)
    assert infos["MultiheadAttention"].module_cls is TorchMultiheadAttention
    return infos


def samples(info, dtype, training, seed):
    torch.manual_seed(seed)
    return info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True, training=training)


def build(info, sample, ours: bool):
    args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    torch.manual_seed(0)
    cls = MultiheadAttention if ours and info.module_cls is TorchMultiheadAttention else info.module_cls
    return cls(*args, **kwargs)


def tensors(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    return [t for t in output if t is not None]


def non_contiguous(value):
    """The same values in a non-contiguous tensor (every other element of a wider one)."""
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    wide = value.detach().repeat_interleave(2, dim=-1)[..., ::2]
    assert not wide.is_contiguous()
    return wide.requires_grad_(value.requires_grad)


def forward_and_grads(module, args, kwargs):
    out = tensors(module(*args, **kwargs))
    wrt = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad] + list(module.parameters())
    if not torch.is_grad_enabled() or not any(o.requires_grad for o in out):
        return out, []
    generator = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=generator, dtype=o.dtype)).sum() for o in out)
    return out, torch.autograd.grad(loss, wrt, allow_unused=True)


def check_reference_fn(sample, theirs, ours, args, kwargs, tol, where):
    """The sample's reference_fn (torch's own expectation: unbatched input as a batch of one,
    the encoder layer's inference fast path against training mode) gives torch's result on
    the drop-in, and the drop-in meets it wherever torch's class does. (On one Transformer
    sample torch's class does not: eval with an unbatched key_padding_mask.)"""
    with torch.no_grad():
        results = {}
        for label, module in (("torch", theirs), ("drop-in", ours)):
            results[label] = (tensors(sample.reference_fn(module, *args, **kwargs)), tensors(module(*args, **kwargs)))
    for r, e in zip(results["drop-in"][0], results["torch"][0], strict=True):
        torch.testing.assert_close(r, e, **tol, msg=lambda m: f"{where}, reference_fn vs torch's: {m}")
    torch_meets_it = all(torch.allclose(o, r, **tol) for r, o in zip(*results["torch"]))
    if torch_meets_it:
        for r, o in zip(*results["drop-in"], strict=True):
            torch.testing.assert_close(o, r, **tol, msg=lambda m: f"{where}, reference_fn: {m}")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", MODULES)
def test_torch_samples_match_torchs_class(module_infos, monkeypatch, name, dtype, training):
    info = module_infos[name]
    theirs_samples = samples(info, dtype, training, seed=11)
    # The drop-in patched in as torch's class, so torch's Transformer modules (and the encoder
    # layers the TransformerEncoder samples build) construct it.
    with monkeypatch.context() as patch:
        patch.setattr(torch.nn.modules.transformer, "MultiheadAttention", MultiheadAttention)
        ours_samples = samples(info, dtype, training, seed=11)
        assert len(ours_samples) == len(theirs_samples) > 0
        pairs = [(build(info, t, False), build(info, o, True), t) for t, o in zip(theirs_samples, ours_samples)]
    tol = TOL[dtype]
    for index, (theirs, ours, sample) in enumerate(pairs):
        where = f"{name} sample {index} ({sample.desc or 'no desc'})"
        assert any(isinstance(m, MultiheadAttention) for m in ours.modules()), where
        ours.to(dtype).load_state_dict(theirs.to(dtype).state_dict())
        theirs.train(training), ours.train(training)
        args, kwargs = sample.forward_input.args, sample.forward_input.kwargs
        expected, expected_grads = forward_and_grads(theirs, args, kwargs)
        got, got_grads = forward_and_grads(ours, args, kwargs)
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, **tol, msg=lambda m: f"{where}: {m}")
        for g, e in zip(got_grads, expected_grads, strict=True):
            if e is None:
                assert g is None or not g.any(), where
            else:
                torch.testing.assert_close(g, e, **tol, msg=lambda m: f"{where}, gradient: {m}")
        if sample.reference_fn is not None:
            check_reference_fn(sample, theirs, ours, args, kwargs, tol, where)
        with torch.no_grad():  # (both without gradients: torch's eval paths differ with them)
            plain = tensors(ours(*args, **kwargs))
            strided = tensors(ours(*[non_contiguous(a) for a in args],
                                   **{k: non_contiguous(v) for k, v in kwargs.items()}))
        for s, p in zip(strided, plain, strict=True):
            torch.testing.assert_close(s, p, **tol, msg=lambda m: f"{where}, non-contiguous: {m}")


@pytest.mark.parametrize("name", ["MultiheadAttention", "TransformerEncoderLayer"])
def test_torch_samples_survive_save_load_and_deepcopy(module_infos, monkeypatch, name):
    info = module_infos[name]
    monkeypatch.setattr(torch.nn.modules.transformer, "MultiheadAttention", MultiheadAttention)
    for sample in samples(info, torch.float32, training=False, seed=12):
        ours = build(info, sample, ours=True).eval()
        args, kwargs = sample.forward_input.args, sample.forward_input.kwargs
        buffer = io.BytesIO()
        torch.save(ours, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        assert type(loaded) is type(ours)
        with torch.no_grad():
            expected = tensors(ours(*args, **kwargs))
            for other in (loaded, copy.deepcopy(ours)):
                for g, e in zip(tensors(other(*args, **kwargs)), expected, strict=True):
                    torch.testing.assert_close(g, e, atol=0, rtol=0)


def test_torch_multihead_attention_samples_gradcheck_and_gradgradcheck(module_infos):
    """torch's test_grad / test_gradgrad for MultiheadAttention: float64, with respect to the
    inputs and every parameter (torch's own class passes both on these samples)."""
    info = module_infos["MultiheadAttention"]
    checked = 0
    for index, sample in enumerate(samples(info, torch.float64, training=False, seed=13)):
        if not sample.constructor_input.kwargs["batch_first"]:
            continue  # the samples are unbatched, where batch_first changes nothing: a duplicate
        checked += 1
        ours = build(info, sample, ours=True).to(torch.float64)
        args, kwargs = sample.forward_input.args, sample.forward_input.kwargs
        names = [name for name, _ in ours.named_parameters()]
        params = [p.detach().clone().requires_grad_(True) for p in ours.parameters()]
        num_args = len(args)

        def function(*flat, ours=ours, kwargs=kwargs, names=names, num_args=num_args):
            state = dict(zip(names, flat[num_args:]))
            return tuple(tensors(torch.func.functional_call(ours, state, flat[:num_args], kwargs)))

        inputs = (*args, *params)
        assert torch.autograd.gradcheck(function, inputs, fast_mode=True), index
        assert torch.autograd.gradgradcheck(function, inputs, fast_mode=True), index
    assert checked >= 16
