"""Checks shared by the masking test modules: the masks of a whole dataset, against its unmasked tokens."""
import numpy as np

from bertpretrain.data import CLS_ID, MASK_ID, NUM_RESERVED, PAD_ID, SEP_ID


def check_masks(dataset, rate=(0.14, 0.16)):
    """Check the masked-LM inputs of every example of ``dataset`` (a PretrainingDataset) against the
    same examples unmasked, and return ``(original, chosen)``: the (N, T) unmasked token ids and
    where predictions were chosen.

    Only chosen positions change; each label is the original token; no [CLS], [SEP] or [PAD] is
    chosen and none beyond ``valid_len``; the predictions are a fraction within ``rate`` of the valid
    tokens (15%); chosen tokens become [MASK] 80% of the time, a random non-reserved token 10%, and
    stay 10% (a random token equal to the original counts as kept), within four binomial standard
    errors of the number chosen (seeds are fixed: the check is deterministic, not flaky).
    """
    masked = dataset.batch(np.arange(len(dataset)))
    original = dataset._tokens_at(dataset.pairs, np.broadcast_to(np.arange(dataset.max_len), masked.tokens.shape))
    weights = masked.mlm_weights.astype(bool)
    rows = np.broadcast_to(np.arange(len(dataset))[:, None], weights.shape)
    chosen = np.zeros_like(original, dtype=bool)
    chosen[rows[weights], masked.pred_positions[weights]] = True
    assert (masked.tokens[~chosen] == original[~chosen]).all(), "a token not chosen for prediction was changed"
    assert (masked.mlm_labels[weights] == original[chosen]).all(), "a label is not the original token"
    assert not np.isin(original[chosen], [CLS_ID, SEP_ID, PAD_ID]).any(), "a special token was chosen"
    assert (masked.pred_positions[weights] < np.repeat(masked.valid_lens, weights.sum(1))).all()
    predicted = weights.sum() / masked.valid_lens.sum()
    assert rate[0] < predicted < rate[1], f"{predicted:.4f} of the tokens are predicted, not 15%"
    replaced = masked.tokens[chosen]
    random_token = (replaced != MASK_ID) & (replaced != original[chosen])
    for name, share, expected in (("[MASK]", (replaced == MASK_ID).mean(), 0.8),
                                  ("a random token", random_token.mean(), 0.1)):
        tolerance = 4 * np.sqrt(expected * (1 - expected) / len(replaced))
        assert abs(share - expected) < tolerance, f"{share:.4f} of the chosen tokens became {name}, not {expected}"
    assert replaced[random_token].min() >= NUM_RESERVED, "a reserved token was drawn as a random token"
    return original, chosen
