"""The transformers side of tests/test_hf.py, run in a separate process (transformers + CPU torch, no MXNet).

    python tests/hf_reference.py outputs FOLDER INPUTS.npz OUT.npz
        BertForPreTraining.from_pretrained(FOLDER) on the inputs (input_ids, token_type_ids,
        attention_mask, pred_positions): writes encoded, mlm_logits (at pred_positions), nsp_logits.
    python tests/hf_reference.py tokenize FOLDER TEXTS.json OUT.json
        AutoTokenizer.from_pretrained(FOLDER) ids of each [text] or [text_a, text_b].
    python tests/hf_reference.py random FOLDER
        a randomly initialised BertForPreTraining (seeded, small) saved with save_pretrained.
"""
import json
import sys

import numpy as np
import torch
from transformers import AutoTokenizer, BertConfig, BertForPreTraining


def outputs(folder, inputs_path, out_path):
    inputs = np.load(inputs_path)
    model = BertForPreTraining.from_pretrained(folder).eval()
    with torch.no_grad():
        result = model(input_ids=torch.from_numpy(inputs["input_ids"].astype(np.int64)),
                       token_type_ids=torch.from_numpy(inputs["token_type_ids"].astype(np.int64)),
                       attention_mask=torch.from_numpy(inputs["attention_mask"].astype(np.int64)),
                       output_hidden_states=True)
    positions = torch.from_numpy(inputs["pred_positions"].astype(np.int64))
    mlm = torch.gather(result.prediction_logits, 1,
                       positions[:, :, None].expand(-1, -1, result.prediction_logits.shape[-1]))
    np.savez(out_path, encoded=result.hidden_states[-1].numpy(), mlm_logits=mlm.numpy(),
             nsp_logits=result.seq_relationship_logits.numpy())


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


def random(folder):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=40, type_vocab_size=2)
    model = BertForPreTraining(config).eval()
    with torch.no_grad():  # non-trivial LayerNorm and bias values, so that a mix-up would show
        for name, param in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(folder)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"outputs": outputs, "tokenize": tokenize, "random": random}[command](*args)
