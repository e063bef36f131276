"""Choosing the devices (MXNet contexts) to train on."""
import mxnet as mx


def default_devices():
    """Every GPU MXNet can see, or the CPU when there is none."""
    num_gpus = mx.context.num_gpus()
    return [mx.gpu(i) for i in range(num_gpus)] or [mx.cpu()]


def parse_devices(spec):
    """Devices from a string such as ``'cpu'``, ``'gpu'`` (all GPUs), ``'cpu:0,cpu:1'`` or ``'gpu:0,gpu:1'``.

    ``None`` or ``'auto'`` gives :func:`default_devices`. Several CPU contexts stand in for several
    GPUs (each is a separate replica with its own gradients), which is how multi-device training
    is tested without GPUs.
    """
    if spec is None or spec == "auto":
        return default_devices()
    devices = []
    for item in spec.split(","):
        kind, _, index = item.strip().partition(":")
        if kind not in ("cpu", "gpu") or (index and not index.isdigit()):
            raise ValueError(f"cannot read device {item!r} in {spec!r}: use cpu, gpu, cpu:N or gpu:N, "
                             "separated by commas (e.g. 'gpu:0,gpu:1')")
        if kind == "gpu":
            gpus = mx.context.num_gpus()
            if not gpus:
                raise ValueError(f"{item.strip()!r} was asked for but MXNet sees no GPU: install a CUDA build "
                                 "(e.g. mxnet-cu112) or use --devices cpu")
            if not index:
                devices += [mx.gpu(i) for i in range(gpus)]
                continue
            if int(index) >= gpus:
                raise ValueError(f"{item.strip()!r} was asked for but MXNet sees {gpus} GPU(s): gpu:0 to "
                                 f"gpu:{gpus - 1}")
        devices.append(mx.Context(kind, int(index or 0)))
    if len(set(devices)) != len(devices):
        raise ValueError(f"device list {spec!r} names a device twice")
    return devices
