"""Choosing devices: a GPU that MXNet cannot run on is refused before training, naming the way out."""
import bertpretrain  # noqa: F401  (before mxnet)
import mxnet as mx
import pytest

from bertpretrain.train import devices as devices_module
from bertpretrain.train.strategy import make_strategy


def test_cpu_devices_pass_the_check():
    assert make_strategy("device", [mx.cpu(0), mx.cpu(1)]).devices == [mx.cpu(0), mx.cpu(1)]


def test_gpu_that_cannot_run_is_refused_with_mxnets_reason():
    # This machine's CPU wheel cannot run anything on gpu(0): the real MXNet error is the reason.
    with pytest.raises(RuntimeError) as info:
        devices_module.check_runnable([mx.gpu(0)])
    text = str(info.value)
    assert "gpu(0)" in text and "not implemented for GPU" in text and "--devices cpu" in text


def test_gpu_newer_than_the_wheel_names_the_compute_capability(monkeypatch):
    # MXNet 1.9.1's CUDA wheels carry machine code for sm_50-sm_86 and no PTX: on a Hopper GPU
    # every kernel fails with CUDA's "no kernel image" error. Simulate that error.
    def no_kernel_image(ctx):
        raise mx.base.MXNetError("CUDA: no kernel image is available for execution on the device")

    monkeypatch.setattr(devices_module, "_probe", no_kernel_image)
    with pytest.raises(RuntimeError) as info:
        make_strategy("device", [mx.gpu(1)])
    text = str(info.value)
    assert "gpu(1)" in text and "sm_86" in text and "--devices cpu" in text
