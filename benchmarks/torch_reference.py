"""The PyTorch reference of bench_model.py: the same BERT shapes, batches and loss, in PyTorch.

Run by bench_model.py (``--torch PYTHON``) in a separate interpreter that has torch (never install
torch beside MXNet): ``PYTHON benchmarks/torch_reference.py '<json options>'``. Prints one JSON
line: per mode, the median step time (wall-clock and process CPU), sequences/s and the (MLM, NSP) losses of the first and last
three steps. Modes, interleaved step by step in one process, each on its own copy of the same
initial model:

- ``fp32``: float32 eager;
- ``bf16``: the forward (and loss) under ``torch.autocast('cpu', dtype=torch.bfloat16)``, backward
  and Adam outside it: what Hugging Face's Trainer does with ``--bf16 --use_cpu``.

The model mirrors bertpretrain's (model/): summed token, segment and position embeddings (with
LayerNorm and dropout for the original-BERT options), post-LN layers of one packed q/k/v projection,
``scaled_dot_product_attention`` with the padding keys masked, an output projection and the FFN;
the MLM head (dense, activation, LayerNorm, decoder tied to the token embedding or not) on the
gathered prediction positions only, the NSP head (tanh pooler on [CLS], classifier); the loss
``sum(weights * CE) / num_preds + mean(NSP CE)``; Adam; weights drawn as in the original BERT
(normal, std 0.02). The batches are bench_model.py's ``synthetic_batches``, the same arrays.
"""
import json
import os
import sys
import time

import numpy as onp
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_model import synthetic_batches  # noqa: E402


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
    o = json.loads(sys.argv[1])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    batches = [tuple(torch.from_numpy(a.astype("int64") if a.dtype.kind == "i" else a) for a in batch)
               for batch in synthetic_batches(4, o["batch_size"], o["max_len"], o["vocab_size"])]
    reference = BERT(o)
    reference.apply(bert_init)
    models, optimizers = {}, {}
    for mode in o["modes"]:
        model = BERT(o)
        model.load_state_dict(reference.state_dict())
        model.train()
        models[mode] = model
        optimizers[mode] = torch.optim.Adam(model.parameters(), lr=o["lr"])

    def step(mode, batch):
        tokens, segments, valid_lens, positions, weights, labels, nsp_labels = batch
        num_preds = float(weights.sum())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            mlm_sum, nsp_sum = models[mode](*batch)
            loss = mlm_sum / num_preds + nsp_sum / tokens.shape[0]
        optimizers[mode].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[mode].step()
        return float(mlm_sum) / num_preds, float(nsp_sum) / tokens.shape[0]

    times = {mode: [] for mode in models}
    cpu_times = {mode: [] for mode in models}
    losses = {mode: [] for mode in models}
    modes = list(models)
    for index in range(o["warmup"] + o["steps"]):
        for mode in (modes if index % 2 == 0 else modes[::-1]):
            start, cpu_start = time.perf_counter(), time.process_time()
            losses[mode].append(step(mode, batches[index % 4]))
            if index >= o["warmup"]:
                times[mode].append(time.perf_counter() - start)
                cpu_times[mode].append(time.process_time() - cpu_start)
    result = {}
    for mode in modes:
        seconds = sorted(times[mode])[len(times[mode]) // 2]
        result[mode] = {"step_ms": 1e3 * seconds, "sequences_per_s": o["batch_size"] / seconds,
                        "step_cpu_s": sorted(cpu_times[mode])[len(cpu_times[mode]) // 2],
                        "first_losses": onp.mean(losses[mode][:3], axis=0).round(3).tolist(),
                        "last_losses": onp.mean(losses[mode][-3:], axis=0).round(3).tolist()}
    result["torch"] = torch.__version__
    print(json.dumps(result))


if __name__ == "__main__":
    main()
