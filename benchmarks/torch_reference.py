"""The PyTorch reference of bench_model.py: the same BERT shapes, batches and loss, in PyTorch.

Run by bench_model.py (``--torch PYTHON``) in a separate interpreter that has torch (never install
torch beside MXNet), with bench_model.py's shape options: ``PYTHON benchmarks/torch_reference.py
--config base --steps 20``. Prints one JSON line, bench_model.py's child result: per mode, the step
times (``--clock``: wall-clock or process CPU seconds) and the (MLM, NSP) losses of the first and
last three steps. Modes, interleaved step by step in one process (benchmarks/common.py), each on its
own copy of the same initial model:

- ``fp32 eager``: float32 eager;
- ``bf16 autocast``: the forward (and loss) under ``torch.autocast('cpu', dtype=torch.bfloat16)``,
  backward and Adam outside it: what Hugging Face's Trainer does with ``--bf16 --use_cpu``.

The model mirrors bertpretrain's (model/): summed token, segment and position embeddings (with
LayerNorm and dropout for the original-BERT options), post-LN layers of one packed q/k/v projection,
``scaled_dot_product_attention`` with the padding keys masked, an output projection and the FFN;
the MLM head (dense, activation, LayerNorm, decoder tied to the token embedding or not) on the
gathered prediction positions only, the NSP head (tanh pooler on [CLS], classifier); the loss
``sum(weights * CE) / num_preds + mean(NSP CE)``; Adam; weights drawn as in the original BERT
(normal, std 0.02). The batches are bench_model.py's ``synthetic_batches``, the same arrays.
OpenMP threads: OMP_NUM_THREADS (default 1).
"""
import argparse
import functools
import json
import os

import numpy as onp
import torch
from torch import nn
from torch.nn import functional as F

from bench_model import CONFIGS, add_shape_arguments, resolve_shapes, synthetic_batches
from common import add_clock_argument, interleaved

MODES = ("fp32 eager", "bf16 autocast")


class Layer(nn.Module):
    def __init__(self, o):
        super().__init__()
        h = o["num_hiddens"]
        self.heads, self.dropout, self.act = o["num_heads"], o["dropout"], o["activation"]
        self.qkv, self.proj = nn.Linear(h, 3 * h), nn.Linear(h, h)
        self.ffn_in, self.ffn_out = nn.Linear(h, o["ffn_num_hiddens"]), nn.Linear(o["ffn_num_hiddens"], h)
        self.norm1 = nn.LayerNorm(h, eps=o["layer_norm_eps"])
        self.norm2 = nn.LayerNorm(h, eps=o["layer_norm_eps"])

    def forward(self, x, keep):  # x (B, T, H); keep (B, 1, 1, T) bool
        b, t, h = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                             dropout_p=self.dropout if self.training else 0.0)
        ctx = ctx.transpose(1, 2).reshape(b, t, h)  # (B, T, H)
        x = self.norm1(x + F.dropout(self.proj(ctx), self.dropout, self.training))
        ffn = self.ffn_out(activation(self.ffn_in(x), self.act))
        return self.norm2(x + F.dropout(ffn, self.dropout, self.training))


def activation(x, name):
    return F.gelu(x) if name == "gelu" else F.relu(x)


class BERT(nn.Module):
    def __init__(self, o):
        super().__init__()
        h, v = o["num_hiddens"], o["vocab_size"]
        self.o = o
        self.token, self.segment = nn.Embedding(v, h), nn.Embedding(2, h)
        self.position = nn.Embedding(o["max_len"], h)
        self.embed_norm = nn.LayerNorm(h, eps=o["layer_norm_eps"]) if o["embedding_layer_norm"] else None
        self.layers = nn.ModuleList(Layer(o) for _ in range(o["num_layers"]))
        self.transform, self.mlm_norm = nn.Linear(h, h), nn.LayerNorm(h, eps=o["layer_norm_eps"])
        self.decoder = None if o["tie_mlm_weights"] else nn.Linear(h, v)
        self.decoder_bias = nn.Parameter(torch.zeros(v)) if o["tie_mlm_weights"] else None
        self.pooler, self.classifier = nn.Linear(h, h), nn.Linear(h, 2)

    def forward(self, tokens, segments, valid_lens, positions, weights, labels, nsp_labels):
        b, t = tokens.shape
        x = self.token(tokens) + self.segment(segments) + self.position(torch.arange(t)).unsqueeze(0)
        if self.embed_norm is not None:
            x = F.dropout(self.embed_norm(x), self.o["dropout"], self.training)
        keep = (torch.arange(t).unsqueeze(0) < valid_lens.unsqueeze(1)).view(b, 1, 1, t)
        for layer in self.layers:
            x = layer(x, keep)
        rows = torch.arange(b).unsqueeze(1).expand_as(positions)
        hidden = self.mlm_norm(activation(self.transform(x[rows, positions]), self.o["activation"]))
        if self.decoder is None:
            logits = F.linear(hidden, self.token.weight, self.decoder_bias)
        else:
            logits = self.decoder(hidden)  # (B, P, V)
        mlm = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                              reduction="none")
        mlm_sum = (mlm * weights.reshape(-1)).sum()
        nsp = F.cross_entropy(self.classifier(torch.tanh(self.pooler(x[:, 0]))).float(), nsp_labels,
                              reduction="sum")
        return mlm_sum, nsp


def bert_init(module):
    """Original BERT's initialisation (normal, std 0.02; zero biases; LayerNorm at 1 and 0), so that
    the tied decoder's logits start small (PyTorch's Embedding default, std 1, starts the MLM loss
    near 60 nats)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_arguments(parser)
    add_clock_argument(parser, "steps")
    args = resolve_shapes(parser.parse_args())
    o = dict(vars(args), **CONFIGS[args.config]["model"])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    batches = [tuple(torch.from_numpy(a.astype("int64") if a.dtype.kind == "i" else a) for a in batch)
               for batch in synthetic_batches(4, args.batch_size, args.max_len, args.vocab_size)]
    reference = BERT(o)
    reference.apply(bert_init)
    models, optimizers = {}, {}
    for mode in MODES:
        model = BERT(o)
        model.load_state_dict(reference.state_dict())
        model.train()
        models[mode] = model
        optimizers[mode] = torch.optim.Adam(model.parameters(), lr=args.lr)

    def step(mode, batch, losses):
        tokens, segments, valid_lens, positions, weights, labels, nsp_labels = batch
        num_preds = float(weights.sum())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16 autocast"):
            mlm_sum, nsp_sum = models[mode](*batch)
            loss = mlm_sum / num_preds + nsp_sum / tokens.shape[0]
        optimizers[mode].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[mode].step()
        losses.append((mlm_sum.item() / num_preds, nsp_sum.item() / tokens.shape[0]))

    times = {mode: [] for mode in MODES}
    losses = {mode: [] for mode in MODES}
    for index in range(args.warmup + args.steps):
        order = MODES if index % 2 == 0 else MODES[::-1]  # interleaved, alternating order
        seconds = interleaved([functools.partial(step, mode, batches[index % 4], losses[mode]) for mode in order],
                              1, warmup=0, clock=args.clock)
        for mode, (step_seconds,) in zip(order, seconds):
            if index >= args.warmup:
                times[mode].append(step_seconds)
    print(json.dumps({"library": f"PyTorch {torch.__version__}", "paths": {mode: {
        "step_seconds": times[mode],
        "first_losses": onp.mean(losses[mode][:3], axis=0).round(3).tolist(),
        "last_losses": onp.mean(losses[mode][-3:], axis=0).round(3).tolist(),
    } for mode in MODES}}))


if __name__ == "__main__":
    main()
