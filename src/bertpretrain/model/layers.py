"""Small building blocks shared by the encoder and the heads."""
from mxnet.gluon import HybridBlock


class LayerNorm(HybridBlock):
    """Layer normalisation over the last axis with learned scale and shift.

    ``norm(x)`` normalises ``x`` (..., num_features); ``norm(x, residual)`` is the post-LN
    sublayer output ``layer_norm(residual + dropout(x))`` with the ``dropout`` rate given here.
    Computed by ``layer_norm`` / ``add_layer_norm`` of ``ops``, the model's op layer
    (:mod:`bertpretrain.model.ops`).
    """

    def __init__(self, num_features, eps, ops, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self._ops = ops
        self._num_features = num_features
        self._eps = eps
        self._dropout = dropout
        self.gamma = self.params.get("gamma", shape=(num_features,), init="ones")
        self.beta = self.params.get("beta", shape=(num_features,), init="zeros")

    def hybrid_forward(self, F, x, residual=None, gamma=None, beta=None):
        if residual is None:
            return self._ops.layer_norm(F, x, gamma, beta, self._eps, self._num_features)
        return self._ops.add_layer_norm(F, x, residual, gamma, beta, self._eps, self._num_features,
                                        self._dropout)


class Dense(HybridBlock):
    """A fully-connected layer over the last axis with its activation: ``act(x @ weight.T + bias)``.

    ``x`` (..., in_units) -> (..., units); ``activation`` None or a name that ``ops.activation``
    knows. Computed by ``dense`` of the model's op layer, so that the model's precision applies to
    it (float32: MXNet's FullyConnected and the activation; bf16: one kernel of the bfloat16 GEMM
    and the activation). Its parameters are those of Gluon's ``nn.Dense`` (``weight`` (units,
    in_units), default initializer; ``bias`` (units,), zeros) under the same names, so checkpoints
    and the Hugging Face mapping see no difference.
    """

    def __init__(self, units, in_units, ops, activation=None, **kwargs):
        super().__init__(**kwargs)
        self._ops = ops
        self._units = units
        self._activation = activation
        self.weight = self.params.get("weight", shape=(units, in_units))
        self.bias = self.params.get("bias", shape=(units,), init="zeros")

    def hybrid_forward(self, F, x, weight=None, bias=None):
        return self._ops.dense(F, x, weight, bias, self._units, self._activation)
