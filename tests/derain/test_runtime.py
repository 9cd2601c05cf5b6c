"""The inference policy's per-device and per-model defaults, and compiled inference (same results, safe fallback)."""

from __future__ import annotations

import pytest
import torch

from derain import build_model
from derain.inference import derain_tensor
from derain.runtime import COMPILE_ENV, inference_policy, model_forward, validation_copy

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def tiny_mspfn() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("mspfn-lite", channels=8, cfm_channels=4, lstm_channels=(4, 8, 8), units=1).eval()


def test_policy_defaults_per_device_and_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    mspfn, prenet = build_model("mspfn", units=1), build_model("prenet", stages=1)
    cpu = inference_policy(CPU, model=mspfn)  # the paper's width: compile measured 1.5x faster
    assert cpu.channels_last and not cpu.amp and cpu.batch_size is None and cpu.compile
    assert not inference_policy(CPU, model=tiny_mspfn()).compile  # mspfn-lite width: gain below the compile cost
    assert not inference_policy(CPU, model=prenet).compile  # measured 0.96x: not compiled
    assert not inference_policy(CPU).compile  # no model: nothing claims a gain
    gpu = inference_policy(CUDA, model=mspfn)  # a torch.device needs no GPU to exist
    assert not gpu.channels_last and not gpu.compile and gpu.batch_size == 8
    assert gpu.amp == (torch.cuda.is_available() and torch.cuda.is_bf16_supported())  # bf16 measured harmless
    assert not inference_policy(CUDA, model=mspfn, amp=False).amp
    assert not inference_policy(CPU, model=mspfn).amp  # CPU autocast is never the default
    assert not inference_policy(CPU, model=mspfn, compile=False).compile
    assert inference_policy(CPU, model=prenet, compile=True).compile


def test_compile_env_changes_the_default_but_not_an_explicit_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    mspfn, prenet = build_model("mspfn", units=1), build_model("prenet", stages=1)
    monkeypatch.setenv(COMPILE_ENV, "0")
    assert not inference_policy(CPU, model=mspfn).compile
    assert inference_policy(CPU, model=mspfn, compile=True).compile
    monkeypatch.setenv(COMPILE_ENV, "1")
    assert inference_policy(CPU, model=prenet).compile
    assert not inference_policy(CPU, model=prenet, compile=False).compile
    monkeypatch.setenv(COMPILE_ENV, "yes")
    with pytest.raises(ValueError, match=COMPILE_ENV):
        inference_policy(CPU, model=mspfn)


def test_compiled_derain_equals_eager_whole_and_tiled() -> None:
    """Compiled MSPFN (the CPU default) gives the plain model's output to 1e-5, whole images and tiles (whose
    channel attention replays the whole image's statistics: module state the compiled graph must not freeze)."""
    model = tiny_mspfn().to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(1))
    x[1, :, :, 32:] += 0.5  # the second image's statistics differ from the first's
    x = x.clamp(0, 1)
    for kwargs in ({}, {"tile": 32, "overlap": 16}):
        plain = derain_tensor(model, x, channels_last=True, **kwargs)
        compiled = derain_tensor(model, x, channels_last=True, compile=True, **kwargs)
        assert (compiled - plain).abs().max() <= 1e-5, kwargs


def test_failed_compilation_warns_once_and_runs_the_plain_model() -> None:
    model = tiny_mspfn()
    calls = []

    def broken_backend(gm: torch.fx.GraphModule, example_inputs: list) -> None:
        calls.append(1)
        raise RuntimeError("no C++ compiler here")

    x = torch.rand(1, 3, 16, 16)
    forward = model_forward(model, True, backend=broken_backend)
    with torch.inference_mode():
        expected = model(x)
        with pytest.warns(RuntimeWarning, match="running it uncompiled.*no C\\+\\+ compiler"):
            first = forward(x)
        second = model_forward(model, True)(x)  # remembered: no second attempt, no second warning
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert len(calls) == 1
    assert model_forward(model, False) is model


def test_compiling_silences_only_torchs_cuda_home_notice() -> None:
    import logging

    log = logging.getLogger("torch.utils.cpp_extension")
    model_forward(tiny_mspfn(), True)  # installs the filter (compilation itself happens at the first call)
    make = lambda msg: log.makeRecord(log.name, logging.WARNING, __file__, 0, msg, (), None)  # noqa: E731
    assert not log.filter(make("No CUDA runtime is found, using CUDA_HOME='/usr/local'"))
    assert log.filter(make("some other warning"))


def test_compiled_model_keeps_its_state_dict_and_is_freed_with_it() -> None:
    import gc
    import weakref

    model = tiny_mspfn()
    keys = set(model.state_dict())
    model_forward(model, True)
    assert set(model.state_dict()) == keys  # the compiled module is no submodule
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None  # nothing else holds a compiled model alive


def test_validation_copy_runs_nhwc_on_cpu_and_leaves_the_trained_model_as_it_was() -> None:
    model = tiny_mspfn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy, layout = validation_copy(model, CPU)
    assert copy is not model and layout == torch.channels_last
    assert all(p.is_contiguous() for p in model.parameters())  # the trained model keeps NCHW
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        expected = model.eval()(x)
        got = copy.eval()(x.contiguous(memory_format=layout))
    model.train()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert any(p.dim() == 4 and not p.is_contiguous() for p in copy.parameters())  # the copy is NHWC
    # where the policy keeps NCHW (a model that opts out of channels_last on the CPU), the model itself
    model.channels_last_on_cpu = False
    assert validation_copy(model, CPU) == (model, torch.contiguous_format)
