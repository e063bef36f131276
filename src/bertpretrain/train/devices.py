"""Choosing the devices (MXNet contexts) to train on."""
import mxnet as mx


def default_devices():
    """Every GPU MXNet can see, or the CPU when there is none."""
    num_gpus = mx.context.num_gpus()
    return [mx.gpu(i) for i in range(num_gpus)] or [mx.cpu()]


def _probe(ctx):
    """Run one small operator on ``ctx`` and wait for it (raises MXNet's error if it cannot run)."""
    mx.nd.zeros((1,), ctx=ctx).asnumpy()


def check_runnable(devices):
    """Raise ``RuntimeError`` naming the device and the way out if MXNet cannot compute on a GPU of ``devices``.

    A CUDA wheel runs only on the GPU generations it carries machine code for: MXNet 1.9.1's
    (mxnet-cu110 to mxnet-cu117) hold code for compute capabilities 5.x to 8.x (sm_50 to sm_86)
    and no PTX that a newer driver could compile, so on a Hopper (sm_90) or newer GPU every
    kernel fails. One tiny operator per GPU finds that before the model is built, instead of a
    CUDA error deep inside the first step. CPU contexts are not probed.
    """
    for ctx in devices:
        if ctx.device_type != "gpu":
            continue
        try:
            _probe(ctx)
        except mx.base.MXNetError as error:
            lines = [line.strip() for line in str(error).strip().splitlines()]
            reason = " ".join(line for line in lines if line and not line.startswith(("Traceback", "File ")))
            hint = ""
            if "no kernel image" in str(error):
                hint = (" MXNet 1.9.1's CUDA wheels carry machine code up to sm_86 (Ampere) and no PTX, "
                        "so they cannot run on newer GPUs such as the H100 or H200.")
            raise RuntimeError(f"MXNet cannot compute on {ctx}: {reason.rstrip('.')}.{hint} Train on a GPU the "
                               "installed MXNet supports, or on the CPU with --devices cpu "
                               "(devices=[mx.cpu()]).") from error


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
