"""The transformers side of tests/test_hf.py, run in a separate process (transformers + CPU torch, no MXNet).

    python tests/hf_reference.py outputs JOBS.json
        for each job {"folder", "inputs", "out"} of the list: AutoModelForPreTraining.from_pretrained(folder)
        on the inputs (input_ids, token_type_ids, attention_mask, pred_positions .npz); writes to "out"
        encoded (base_model(...).last_hidden_state), mlm_logits (at pred_positions) and, when the class has
        the head, nsp_logits; prints the class and its loading report (missing / unexpected keys).
    python tests/hf_reference.py tokenize FOLDER TEXTS.json OUT.json
        AutoTokenizer.from_pretrained(FOLDER) ids of each [text] or [text_a, text_b].
    python tests/hf_reference.py adamw IN.npz OUT.npz
        torch.optim.AdamW (lr, weight_decay from IN; PyTorch's betas and eps) on the parameters "p:NAME" of
        IN, with the gradients "g<step>:NAME" of each step; weight decay only for parameters of 2 or more
        dimensions (Hugging Face's rule: none for biases and LayerNorm); writes the parameters to OUT.
    python tests/hf_reference.py random FOLDER MODEL_TYPE [FOLDER MODEL_TYPE ...]
        a randomly initialised model of AutoModelForPreTraining's class for MODEL_TYPE (bert,
        megatron-bert, roberta-prelayernorm; seeded, small) saved with save_pretrained.
"""
import json
import sys

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForPreTraining, AutoTokenizer


def outputs(jobs_path):
    with open(jobs_path) as f:
        jobs = json.load(f)
    for job in jobs:
        inputs = np.load(job["inputs"])
        model, info = AutoModelForPreTraining.from_pretrained(job["folder"], output_loading_info=True)
        model.eval()
        print(job["folder"], type(model).__name__, "MISSING" if info["missing_keys"] else "",
              "UNEXPECTED" if info["unexpected_keys"] else "", info)
        feed = {name: torch.from_numpy(inputs[name].astype(np.int64))
                for name in ("input_ids", "token_type_ids", "attention_mask")}
        with torch.no_grad():
            encoded = model.base_model(**feed).last_hidden_state
            result = model(**feed)
        logits = getattr(result, "prediction_logits", None)
        logits = result.logits if logits is None else logits
        positions = torch.from_numpy(inputs["pred_positions"].astype(np.int64))
        mlm = torch.gather(logits, 1, positions[:, :, None].expand(-1, -1, logits.shape[-1]))
        arrays = dict(encoded=encoded.numpy(), mlm_logits=mlm.numpy())
        if getattr(result, "seq_relationship_logits", None) is not None:
            arrays["nsp_logits"] = result.seq_relationship_logits.numpy()
        np.savez(job["out"], **arrays)


def tokenize(folder, texts_path, out_path):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with open(texts_path) as f:
        texts = json.load(f)
    result = []
    for item in texts:
        encoded = tokenizer(*item)
        result.append({"input_ids": list(encoded["input_ids"]), "token_type_ids": list(encoded["token_type_ids"])})
    with open(out_path, "w") as f:
        json.dump(result, f)


def adamw(in_path, out_path):
    arrays = np.load(in_path)
    params = {key[2:]: torch.nn.Parameter(torch.from_numpy(arrays[key].copy())) for key in arrays.files
              if key.startswith("p:")}
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": float(arrays["weight_decay"])},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=float(arrays["lr"]))
    for step in range(1, int(arrays["steps"]) + 1):
        for name, param in params.items():
            param.grad = torch.from_numpy(arrays[f"g{step}:{name}"].copy())
        optimizer.step()
    np.savez(out_path, **{name: param.detach().numpy() for name, param in params.items()})


def random(*folders_and_types):
    for folder, model_type in zip(folders_and_types[::2], folders_and_types[1::2]):
        torch.manual_seed(0)
        # RoBERTa numbers positions from pad_token_id + 1 = 2: two more rows give the same 40 positions
        positions = 42 if model_type == "roberta-prelayernorm" else 40
        config = AutoConfig.for_model(model_type, vocab_size=97, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, intermediate_size=48, max_position_embeddings=positions,
                                      type_vocab_size=2, pad_token_id=1)
        model = AutoModelForPreTraining.from_config(config).eval()
        with torch.no_grad():  # non-trivial LayerNorm and bias values, so that a mix-up would show
            for name, param in model.named_parameters():
                if name.endswith("bias") or "LayerNorm" in name or ".ln." in name or "layer_norm" in name:
                    param.add_(0.1 * torch.randn_like(param))
        model.save_pretrained(folder)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"outputs": outputs, "tokenize": tokenize, "random": random, "adamw": adamw}[command](*args)
