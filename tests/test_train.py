"""train_bert: device-count independence, learning, exact step counts, checkpoints and resumption."""
import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import warnings

import mxnet as mx
import numpy as np
import pytest

from bertpretrain.data import load_data_wiki
from bertpretrain.model import BERTModel
from bertpretrain.train import (NonFiniteLossError, TrainingConfig, TrainingHistory, evaluate_bert,
                                latest_checkpoint, train_bert)
from bertpretrain.train import loop
from bertpretrain.train.strategy import LocalStrategy

TINY = dict(num_hiddens=32, ffn_num_hiddens=64, num_heads=2, num_layers=1, max_len=32)


def sample_loader(batch_size=16, seed=0, **kwargs):
    return load_data_wiki(batch_size, 32, dataset="wikitext-2-sample", seed=seed, **kwargs)


def params_of(net):
    return [p.data(p.list_ctx()[0]).asnumpy() for p in net.collect_params().values()]


def run(devices=(mx.cpu(),), num_steps=4, dropout=0.0, batch_size=16, data=None, **kwargs):
    train_iter, vocab = sample_loader(batch_size, **(data or {}))
    net = BERTModel(len(vocab), dropout=dropout, **TINY)
    history = train_bert(train_iter, net, devices=list(devices), num_steps=num_steps, seed=1, progress=False, **kwargs)
    return history, net, train_iter


def test_two_devices_match_one_device_on_the_same_global_batches():
    one, net_one, _ = run([mx.cpu()], batch_size=17)  # 17: the devices get uneven halves
    two, net_two, _ = run([mx.cpu(0), mx.cpu(1)], batch_size=17)
    np.testing.assert_allclose(one["mlm_loss"], two["mlm_loss"], rtol=1e-5)
    np.testing.assert_allclose(one["nsp_loss"], two["nsp_loss"], rtol=1e-5)
    for a, b in zip(params_of(net_one), params_of(net_two)):
        np.testing.assert_allclose(a, b, atol=1e-3)  # one Adam step moves a weight by up to lr = 1e-2
    replicas = [p.list_data() for p in net_two.collect_params().values()]
    assert all(np.array_equal(r[0].asnumpy(), r[1].asnumpy()) for r in replicas), "replicas drifted apart"


def assert_same_updates(before, after_a, after_b, rtol=1e-2, atol=1e-6):
    """The parameter changes of two runs agree to ``rtol`` of their size (a factor 2 would not).

    ``atol``: a parameter whose gradient is zero in exact arithmetic (the attention key bias: the
    softmax ignores a shift shared by every key) moves by rounding noise alone, ~1e-7 in norm after
    these SGD steps, which differs between any two summation orders."""
    for p0, a, b in zip(before, after_a, after_b):
        assert np.linalg.norm((a - p0) - (b - p0)) <= rtol * np.linalg.norm(a - p0) + atol


def test_two_devices_match_one_device_with_sgd():
    # Adam hides a wrongly scaled loss (its update is scale-free); plain SGD's update does not.
    train_iter, vocab = sample_loader(17)
    initial = BERTModel(len(vocab), dropout=0.0, **TINY)
    mx.random.seed(1)  # what train_bert does before initialising, so the runs start from these values
    initial.initialize(mx.init.Xavier())
    # float32: a bf16 product's rounding moves the key bias (zero gradient in exact arithmetic)
    # by ~1e-5, above the atol that float32's summation-order noise stays under
    _, net_one, _ = run([mx.cpu()], batch_size=17, optimizer="sgd", lr=2.0, precision="fp32")
    _, net_two, _ = run([mx.cpu(0), mx.cpu(1)], batch_size=17, optimizer="sgd", lr=2.0,
                        precision="fp32")
    assert_same_updates(params_of(initial), params_of(net_one), params_of(net_two))


def test_history_has_one_entry_per_step_and_losses_fall():
    history, _, _ = run(num_steps=30, batch_size=32)
    assert history["step"] == list(range(1, 31))
    assert {len(history[k]) for k in ("mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc", "lr", "seq_per_sec")} == {30}
    assert np.mean(history["mlm_loss"][-5:]) < np.mean(history["mlm_loss"][:3]) - 1.0
    assert all(lr == 0.01 for lr in history["lr"])


def test_num_steps_is_honoured_across_epoch_ends():
    train_iter, vocab = sample_loader(batch_size=128)
    per_epoch = len(train_iter)
    assert per_epoch >= 2
    steps = 2 * per_epoch + 1
    history = train_bert(train_iter, BERTModel(len(vocab), **TINY), devices=[mx.cpu()], num_steps=steps, seed=0,
                         progress=False)
    assert history["step"][-1] == steps and len(history["mlm_loss"]) == steps
    assert train_iter.state_dict() == {"epoch": 2, "batches_given": 1}


def test_warmup_and_linear_decay_schedule_the_learning_rate():
    history, _, _ = run(num_steps=6, warmup_steps=2, lr_decay="linear")
    np.testing.assert_allclose(history["lr"], [0.005, 0.01, 0.01, 0.0075, 0.005, 0.0025])


def test_gradient_clipping_changes_the_update():
    _, plain, _ = run(num_steps=2)
    _, clipped, _ = run(num_steps=2, clip_global_norm=1e-3, optimizer="sgd")
    _, sgd, _ = run(num_steps=2, optimizer="sgd")
    moved = [np.abs(a - b).max() for a, b in zip(params_of(clipped), params_of(sgd))]
    assert max(moved) > 1e-4, "clipping had no effect"


def test_nsp_weight_multiplies_the_next_sentence_gradient():
    """One SGD step moves the parameters by -lr (MLM gradient + nsp_weight x NSP gradient): weight 2 adds
    to weight 1's step what weight 1 adds to the MLM-only step (--no-nsp)."""
    steps = [params_of(run(num_steps=1, optimizer="sgd", **options)[1])
             for options in ({"use_nsp": False}, {"nsp_weight": 1.0}, {"nsp_weight": 2.0})]
    nsp_step = [one - none for none, one in zip(steps[0], steps[1])]
    assert max(np.abs(d).max() for d in nsp_step) > 1e-5, "the NSP loss moved nothing"
    for none, one, two in zip(*steps):  # float32 parameters: differences of steps carry their rounding
        assert np.linalg.norm((two - one) - (one - none)) <= 1e-2 * np.linalg.norm(one - none) + 1e-5


def test_clip_gradient_is_the_deprecated_name_of_the_global_norm_clipping():
    _, clipped, _ = run(num_steps=2, clip_global_norm=1e-3, optimizer="sgd")
    with warnings.catch_warnings(record=True) as caught:  # not pytest.warns: it re-emits MXNet's own warnings
        warnings.simplefilter("always", DeprecationWarning)
        _, old_name, _ = run(num_steps=2, clip_gradient=1e-3, optimizer="sgd")
    assert any("pass clip_global_norm instead" in str(w.message) for w in caught)
    for a, b in zip(params_of(clipped), params_of(old_name)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="pass clip_global_norm alone"):
        run(num_steps=1, clip_gradient=1e-3, clip_global_norm=1e-3)


def test_train_bert_takes_a_config_or_its_fields_as_keywords_made_once():
    """The d2l keyword form and a TrainingConfig give the same run; keywords replace the config's fields."""
    config = TrainingConfig(num_steps=2, seed=1, progress=False, optimizer="sgd")
    train_iter, vocab = sample_loader(16)
    nets = [BERTModel(len(vocab), dropout=0.0, **TINY) for _ in range(3)]
    train_bert(train_iter, nets[0], config, devices=[mx.cpu()])
    train_iter, _ = sample_loader(16)
    train_bert(train_iter, nets[1], devices=[mx.cpu()], num_steps=2, seed=1, progress=False, optimizer="sgd")
    train_iter, _ = sample_loader(16)
    history = train_bert(train_iter, nets[2], TrainingConfig(num_steps=9, seed=1, progress=False), devices=[mx.cpu()],
                         num_steps=2, optimizer="sgd")
    assert history["step"] == [1, 2]
    for a, b, c in zip(*map(params_of, nets)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    with pytest.raises(TypeError, match="unknown options \\['learning_rate'\\]"):
        train_bert(train_iter, nets[0], devices=[mx.cpu()], learning_rate=0.1)
    with pytest.raises(TypeError, match="third argument is a TrainingConfig, got list"):
        train_bert(train_iter, nets[0], [mx.cpu()])
    with pytest.raises(ValueError, match="clip_global_norm \\(--clip-global-norm\\) must be a finite number > 0"):
        TrainingConfig(clip_global_norm=0)


def test_history_survives_a_json_round_trip_with_its_attributes(tmp_path):
    history, _, _ = run(num_steps=2, checkpoint_dir=str(tmp_path))
    assert history.checkpoint == latest_checkpoint(str(tmp_path))
    again = TrainingHistory.from_dict(json.loads(json.dumps(history.to_dict())))
    assert again == history and again.checkpoint == history.checkpoint
    assert (again.interrupted, again.rank, again.workers) == (False, 0, 1) and again["mlm_loss"] == history.mlm_loss
    with pytest.raises(KeyError, match="no 'loss'"):
        history["loss"]


def test_a_worker_other_than_rank_0_leaves_the_loader_and_the_logger_as_they_were(monkeypatch, tmp_path):
    train_iter, vocab = sample_loader()
    during = []

    class SecondOfTwo(LocalStrategy):  # rank 1 of 2 workers, without a second process
        rank, workers = 1, 2

        def global_counts(self, num_preds, batch_size, stop=False):
            during.append((train_iter.shard_index, train_iter.num_shards, loop.logger.disabled))
            return super().global_counts(num_preds, batch_size, stop)

    history = train_bert(train_iter, BERTModel(len(vocab), **TINY), strategy=SecondOfTwo("device", [mx.cpu()]),
                         num_steps=2, seed=1, progress=False, checkpoint_dir=str(tmp_path))
    assert during == [(1, 2, True)] * 2  # its own shard, and rank 0 alone logs
    assert (train_iter.shard_index, train_iter.num_shards, loop.logger.disabled) == (0, 1, False)
    assert (history.rank, history.workers) == (1, 2)
    assert history.checkpoint is None and os.listdir(tmp_path) == []  # rank 0 alone writes


class InterruptAfter:
    """Wraps a loader; sends this process SIGINT when batch ``n`` is taken (a user's Ctrl-C)."""

    def __init__(self, loader, n):
        self.loader, self.n, self.taken = loader, n, 0

    def __iter__(self):
        for batch in self.loader:
            self.taken += 1
            if self.taken == self.n:
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state):
        self.loader.load_state_dict(state)


def test_ctrl_c_then_resume_equals_an_uninterrupted_run(tmp_path):
    reference, reference_net, _ = run(num_steps=6, dropout=0.2, batch_size=128)

    train_iter, vocab = sample_loader(128)
    history = train_bert(InterruptAfter(train_iter, 3), BERTModel(len(vocab), dropout=0.2, **TINY),
                         devices=[mx.cpu()], num_steps=6, seed=1, progress=False, checkpoint_dir=str(tmp_path),
                         vocab=vocab)
    assert history.interrupted and history["step"] == [1, 2, 3]
    assert latest_checkpoint(str(tmp_path)).endswith("step-00000003")

    train_iter, vocab = sample_loader(128)
    net = BERTModel(len(vocab), dropout=0.2, **TINY)
    resumed = train_bert(train_iter, net, devices=[mx.cpu()], num_steps=6, seed=1, progress=False,
                         checkpoint_dir=str(tmp_path), resume=True)
    assert resumed["step"] == list(range(1, 7))
    np.testing.assert_allclose(resumed["mlm_loss"], reference["mlm_loss"], rtol=1e-6)
    np.testing.assert_allclose(resumed["nsp_loss"], reference["nsp_loss"], rtol=1e-6)
    for a, b in zip(params_of(net), params_of(reference_net)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert sorted(os.listdir(tmp_path)) == ["latest", "step-00000003", "step-00000006"]
    assert sorted(os.listdir(tmp_path / "step-00000006")) == [
        "config.json", "model.params", "state.json", "trainer.states", "vocab.json"]


def test_a_process_killed_while_checkpointing_leaves_the_previous_checkpoint(tmp_path):
    script = textwrap.dedent(f"""
        import os
        import bertpretrain
        import mxnet as mx
        from bertpretrain.data import load_data_wiki
        from bertpretrain.model import BERTModel
        from bertpretrain.train import checkpoint, train_bert
        saves = []
        real = checkpoint.save_pretrained
        def dying_save(net, folder, **options):
            saves.append(folder)
            real(net, folder, **options)
            if len(saves) == 2:
                os._exit(3)  # the process dies in the middle of writing the second checkpoint
        checkpoint.save_pretrained = dying_save
        it, vocab = load_data_wiki(16, 32, dataset="wikitext-2-sample", seed=0)
        train_bert(it, BERTModel(len(vocab), dropout=0.0, **{TINY!r}), devices=[mx.cpu()], num_steps=6, seed=1,
                   progress=False, checkpoint_dir={str(tmp_path)!r}, checkpoint_interval=2)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert latest_checkpoint(str(tmp_path)).endswith("step-00000002")
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".step-00000004")]
    assert leftovers, "the test did not catch the process mid-write"

    history, _, _ = run(num_steps=6, checkpoint_dir=str(tmp_path), resume=True)
    assert history["step"] == list(range(1, 7))
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")], "leftovers of the dead save remain"


class WithNaN:
    """Wraps a loader; batch ``n`` gets NaN MLM weights (as a diverging run would produce)."""

    def __init__(self, loader, n):
        self.loader, self.n = loader, n

    def __iter__(self):
        for i, batch in enumerate(self.loader, start=1):
            yield batch._replace(mlm_weights=batch.mlm_weights * np.nan) if i == self.n else batch


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    train_iter, vocab = sample_loader()
    with pytest.raises(NonFiniteLossError, match=r"non-finite at step 3 .*step-00000002"):
        train_bert(WithNaN(train_iter, 3), BERTModel(len(vocab), **TINY), devices=[mx.cpu()], num_steps=6, seed=1,
                   progress=False, checkpoint_dir=str(tmp_path), checkpoint_interval=2)
    assert latest_checkpoint(str(tmp_path)).endswith("step-00000002")


def test_evaluation_is_repeatable_and_reported_in_the_history():
    train_iter, vocab = sample_loader()
    eval_iter, _ = sample_loader(64, split="valid", vocab=vocab, shuffle=False)
    net = BERTModel(len(vocab), **TINY)
    history = train_bert(train_iter, net, devices=[mx.cpu()], num_steps=4, seed=1, progress=False, eval_iter=eval_iter,
                         eval_interval=2)
    assert [e["step"] for e in history["eval"]] == [2, 4]
    again = evaluate_bert(net, eval_iter, [mx.cpu()])
    final = history["eval"][-1]
    for key in ("mlm_loss", "mlm_acc", "nsp_loss", "nsp_acc"):
        assert again[key] == pytest.approx(final[key], rel=1e-6)
    assert final["mlm_perplexity"] == pytest.approx(np.exp(final["mlm_loss"]))
    assert final["num_examples"] == len(eval_iter.dataset)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_steps": 0}, "num_steps \\(--num-steps\\) must be an integer >= 1"),
    ({"devices": [mx.cpu(0), mx.cpu(1)], "kvstore": None}, "kvstore=None does not add up gradients"),
    ({"resume": True}, "need checkpoint_dir"),
    ({"lr": 0}, "lr \\(--lr\\) must be a finite number > 0"),
    ({"lr_decay": "cosine"}, "lr_decay \\(--lr-decay\\) must be one of 'none', 'linear'"),
    ({"initializer": "uniform"}, r"initializer \(--initializer\) must be one of 'xavier', 'bert', got 'uniform'"),
])
def test_bad_arguments_fail_clearly(kwargs, message):
    train_iter, vocab = sample_loader()
    kwargs = {"devices": [mx.cpu()], **kwargs}
    with pytest.raises(ValueError, match=message):
        train_bert(train_iter, BERTModel(len(vocab), **TINY), progress=False, **kwargs)


def test_bert_initializer_draws_weights_from_a_normal_of_std_002():
    train_iter, vocab = sample_loader()
    net = BERTModel(len(vocab), **TINY)
    train_bert(train_iter, net, devices=[mx.cpu()], num_steps=1, lr=1e-9, seed=1, progress=False, initializer="bert")
    embedding = net.encoder.embeddings.token_embedding.weight.data().asnumpy()
    assert embedding.std() == pytest.approx(0.02, rel=0.05)
    assert abs(embedding.mean()) < 0.002
    norm = net.encoder.layers[0].attention_norm
    np.testing.assert_allclose(norm.gamma.data().asnumpy(), 1, atol=1e-6)  # LayerNorm keeps its own init
    xavier = BERTModel(len(vocab), **TINY)
    train_bert(train_iter, xavier, devices=[mx.cpu()], num_steps=1, lr=1e-9, seed=1, progress=False)
    weight = xavier.encoder.layers[0].ffn_in.weight.data().asnumpy()  # Xavier: uniform, bound sqrt(3/fan_avg)
    assert np.abs(weight).max() > 0.1


def test_logged_rate_covers_every_step_since_the_last_line(caplog):
    train_iter, vocab = sample_loader(batch_size=16)
    net = BERTModel(len(vocab), dropout=0.0, **TINY)
    with caplog.at_level(logging.INFO, logger="bertpretrain.train.loop"):
        history = train_bert(train_iter, net, devices=[mx.cpu()], num_steps=4, seed=1, progress=False, log_interval=2)
    logged = [float(re.search(r"([0-9.]+) seq/s", r.getMessage()).group(1)) for r in caplog.records
              if "seq/s" in r.getMessage()]
    per_step = history["seq_per_sec"]
    # Over steps 1-2 the rate is 32 sequences over the two steps' time: the harmonic mean of the rates.
    for line, steps in zip(logged, (per_step[0:2], per_step[2:4])):
        assert line == pytest.approx(len(steps) / sum(1 / r for r in steps), rel=0.02, abs=1)


def test_four_accumulated_batches_of_32_equal_one_batch_of_128():
    """Gradients of 4 micro-batches of 32 add up to those of the batch of 128 they cut: the same parameters
    after several Adam steps (dropout 0), and the same per-step losses (normalised over the global batch)."""
    exact = dict(optimizer="adamw", precision="fp32", data=dict(truncate_pairs=True))  # bf16: rounding to compare
    whole, net_whole, _ = run(num_steps=3, batch_size=128, **exact)
    parts, net_parts, loader = run(num_steps=3, batch_size=32, accumulate_steps=4, **exact)
    assert loader.state_dict() == {"epoch": 0, "batches_given": 12}  # 4 micro-batches per step
    np.testing.assert_allclose(parts["mlm_loss"], whole["mlm_loss"], rtol=1e-5)
    np.testing.assert_allclose(parts["nsp_acc"], whole["nsp_acc"], rtol=1e-6)
    assert parts["seq_per_sec"] and all(rate > 0 for rate in parts["seq_per_sec"])
    # Adam moves a weight by ~lr = 1e-2 per step; rounding of tiny gradients gives ~1e-5. Not compared: the
    # attention key bias, whose gradient is zero in exact arithmetic (the softmax ignores a shift shared by
    # all keys), so that Adam turns its rounding noise, which any other summation order changes, into steps.
    whole_params = net_whole._collect_params_with_prefix()
    for name, param in net_parts._collect_params_with_prefix().items():
        if not name.endswith("key_bias"):
            np.testing.assert_allclose(param.data().asnumpy(), whole_params[name].data().asnumpy(), rtol=1e-4,
                                       atol=2e-5, err_msg=name)
    _, net_two, _ = run(num_steps=3, batch_size=32, accumulate_steps=2, **exact)
    assert not all(np.allclose(a, b, atol=1e-4) for a, b in zip(params_of(net_two), params_of(net_whole)))


def test_ctrl_c_during_an_accumulation_cycle_finishes_the_step_and_resumes_exactly(tmp_path):
    """Ctrl-C on the 2nd of 3 micro-batches of step 2: the step is finished and checkpointed, so resuming
    (AdamW with weight decay, accumulation) gives the uninterrupted run's losses and parameters."""
    options = dict(optimizer="adamw", weight_decay=0.05, accumulate_steps=3, dropout=0.2, batch_size=32)
    reference, reference_net, _ = run(num_steps=4, data=dict(truncate_pairs=True), **options)

    train_iter, vocab = sample_loader(32, truncate_pairs=True)
    history = train_bert(InterruptAfter(train_iter, 5), BERTModel(len(vocab), dropout=0.2, **TINY),
                         devices=[mx.cpu()], num_steps=4, seed=1, progress=False, checkpoint_dir=str(tmp_path),
                         optimizer="adamw", weight_decay=0.05, accumulate_steps=3)
    assert history.interrupted and history["step"] == [1, 2]
    assert train_iter.state_dict() == {"epoch": 0, "batches_given": 6}

    train_iter, vocab = sample_loader(32, truncate_pairs=True)
    net = BERTModel(len(vocab), dropout=0.2, **TINY)
    resumed = train_bert(train_iter, net, devices=[mx.cpu()], num_steps=4, seed=1, progress=False,
                         checkpoint_dir=str(tmp_path), resume=True, optimizer="adamw", weight_decay=0.05,
                         accumulate_steps=3)
    np.testing.assert_allclose(resumed["mlm_loss"], reference["mlm_loss"], rtol=1e-6)
    for a, b in zip(params_of(net), params_of(reference_net)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_adamw_decays_weights_but_not_layernorm_or_biases():
    """One AdamW step with a huge decay and a tiny rate: weight matrices shrink by (1 - lr * wd), LayerNorm
    scales and shifts and biases move by the Adam step alone (at most lr, plus a rounding step of 1.0)."""
    train_iter, vocab = sample_loader(16)
    net = BERTModel(len(vocab), **TINY)
    net.initialize(mx.init.Normal(0.02))
    before = {name: p.data().asnumpy() for name, p in net._collect_params_with_prefix().items()}
    train_bert(train_iter, net, devices=[mx.cpu()], num_steps=1, seed=1, progress=False, optimizer="adamw",
               lr=1e-6, weight_decay=1e4)  # decay factor 1 - 1e-2; the Adam step moves by at most 1e-6
    after = {name: p.data().asnumpy() for name, p in net._collect_params_with_prefix().items()}
    for name, value in before.items():
        moved = np.abs(after[name] - value).max()
        if name.endswith(("bias", "gamma", "beta")):
            assert moved <= 1.2e-6, name
        else:
            np.testing.assert_allclose(after[name], value * (1 - 1e-2), atol=1.2e-6, err_msg=name)


@pytest.mark.parametrize("options, message", [
    (dict(accumulate_steps=0), r"accumulate_steps \(--accumulate-steps\) must be an integer >= 1, got 0"),
    (dict(weight_decay=-0.1), r"weight_decay \(--weight-decay\) must be a finite number >= 0 or None, got -0.1"),
    (dict(weight_decay=0.1, optimizer_params={"wd": 0.1}), r"pass weight_decay \(--weight-decay\) or "),
])
def test_bad_optimizer_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        TrainingConfig(**options)
    assert TrainingConfig(optimizer="adamw").decay() == 0.01 and TrainingConfig().decay() == 0.0


def test_a_diverging_loss_gets_one_loud_warning_naming_the_learning_rate(caplog):
    train_iter, vocab = sample_loader()
    eval_iter, _ = sample_loader(64, split="valid", vocab=vocab, shuffle=False)
    caplog.set_level(logging.INFO, logger="bertpretrain.train.loop")
    history = train_bert(train_iter, BERTModel(len(vocab), dropout=0.0, **TINY), devices=[mx.cpu()], num_steps=12,
                         seed=1, progress=False, lr=3.0, eval_iter=eval_iter, log_interval=1)
    losses = history["mlm_loss"]
    assert max(losses) > 3 * losses[0], "the test needs a run that diverges"
    warnings_ = [r.getMessage() for r in caplog.records if "diverging" in r.getMessage()]
    assert len(warnings_) == 1 and r"lr 3" in warnings_[0] and "learning rate" in warnings_[0]
    assert f"{losses[0]:.3f} at step 1" in warnings_[0]
    final = history["eval"][-1]["mlm_perplexity"]
    assert final > 1e6
    evaluation = [r.getMessage() for r in caplog.records if " eval: " in r.getMessage()][-1]
    assert "perplexity too large to mean anything" in evaluation and f"{final:.1f}" not in evaluation


def test_a_learning_rate_that_trains_gets_no_divergence_warning(caplog):
    caplog.set_level(logging.WARNING)
    history, _, _ = run(num_steps=12, lr=0.01)
    assert history["mlm_loss"][-1] < history["mlm_loss"][0]
    assert "diverging" not in caplog.text


def test_a_ctrl_c_on_another_worker_stops_this_one_after_the_same_step(monkeypatch, tmp_path):
    # Under a launcher every worker gets the Ctrl-C, at slightly different moments; a worker that stopped alone
    # would leave the others waiting for its gradients. The request travels in the step's counts: here the
    # other worker's arrives in step 3's, and rank 0 stops after step 3 and saves it.
    train_iter, vocab = sample_loader()

    class FirstOfTwo(LocalStrategy):  # rank 0 of 2 workers, without a second process
        rank, workers, calls = 0, 2, 0

        def global_counts(self, num_preds, batch_size, stop=False):
            FirstOfTwo.calls += 1
            preds, examples, _ = super().global_counts(num_preds, batch_size, stop)
            return 2 * preds, 2 * examples, stop or FirstOfTwo.calls == 3

    history = train_bert(train_iter, BERTModel(len(vocab), **TINY), strategy=FirstOfTwo("device", [mx.cpu()]),
                         num_steps=10, seed=1, progress=False, checkpoint_dir=str(tmp_path))
    assert history.interrupted and history["step"] == [1, 2, 3]
    assert history.checkpoint == str(tmp_path / "step-00000003")
