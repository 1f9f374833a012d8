"""Learning-stack unit tests: tokenizer, BC loss, updates, checkpoints, evaluation helpers."""

import math

import numpy as np
import pytest
import torch

from dialogue_rl import checkpoint as ckpt
from dialogue_rl.agents import LMAgent, SamplingConfig, ScriptedAgent, generate_utterances
from dialogue_rl.algos import BC, FilteredBC, top_fraction
from dialogue_rl.algos.bc import bc_loss
from dialogue_rl.evaluation import bootstrap_ci, evaluate
from dialogue_rl.models import ModelConfig, build_model, build_word_tokenizer
from dialogue_rl.models.tokenizer import codec as make_codec
from dialogue_rl.train import TrainConfig, batch_indices, lr_at, make_optimizer
from envs.core import Turn
from envs.token_view import WordTokenizer, encode_dialogue
from tests.toy_envs import GuessNumberEnv

TINY = ModelConfig("t", n_layer=1, n_head=2, n_embd=16, n_positions=64)


def _tok():
    return build_word_tokenizer(GuessNumberEnv.vocabulary(), ["is it 1?"])


def _batch(tok, dialogues):
    c = make_codec(tok)
    rows = [encode_dialogue(c, d) for d in dialogues]
    L = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), L), tok.pad_token_id)
    att = torch.zeros((len(rows), L), dtype=torch.long)
    am = torch.zeros((len(rows), L), dtype=torch.bool)
    rw = torch.zeros((len(rows), L))
    for i, (x, m, r) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        att[i, : len(x)] = 1
        am[i, : len(x)] = torch.tensor(m)
        rw[i, : len(x)] = torch.tensor(r)
    return {"input_ids": ids, "attention_mask": att, "action_mask": am, "rewards": rw}


DIALOGUE = [Turn("env", "guess my number from 1 to 4."), Turn("agent", "is it 2?", -1.0), Turn("env", "higher."),
            Turn("agent", "is it 3?", 0.0), Turn("env", "yes!")]


def test_hf_word_tokenizer_matches_pure_python_and_round_trips(tmp_path):
    tok = _tok()
    pure = WordTokenizer(tok.convert_ids_to_tokens(list(range(len(tok)))))
    c = make_codec(tok)
    for t in DIALOGUE:
        assert c.encode(t.text) == pure.encode(t.text)
        assert tok.unk_token_id not in c.encode(t.text)
        assert c.decode(c.encode(t.text)) == t.text
    tok.save_pretrained(tmp_path)
    from dialogue_rl.models import load_tokenizer

    assert make_codec(load_tokenizer(tmp_path)).encode("is it 3?") == c.encode("is it 3?")


def test_bc_loss_only_on_agent_tokens_hand_computed():
    """Logits favouring the right token only at env positions must not lower the loss."""
    tok = _tok()
    batch = _batch(tok, [DIALOGUE])
    ids = batch["input_ids"]
    V = len(tok)
    logits = torch.zeros(1, ids.shape[1], V)
    # uniform logits: loss is log(V) whatever the mask
    assert bc_loss(logits, batch).item() == pytest.approx(math.log(V), rel=1e-5)
    # put all mass on the right next token at env positions only: loss unchanged
    env_pos = (~batch["action_mask"][0, 1:]).nonzero().flatten()
    for t in env_pos:
        logits[0, t, ids[0, t + 1]] = 50.0
    assert bc_loss(logits, batch).item() == pytest.approx(math.log(V), rel=1e-5)
    # and on agent positions: loss drops to ~0
    for t in batch["action_mask"][0, 1:].nonzero().flatten():
        logits[0, t, ids[0, t + 1]] = 50.0
    assert bc_loss(logits, batch).item() < 1e-6
    # hand count: 2 utterances of 4 text tokens + eou each
    assert int(batch["action_mask"].sum()) == 10


def test_one_update_changes_parameters_and_lowers_loss():
    torch.manual_seed(0)
    tok = _tok()
    learner = BC(build_model(TINY, tok))
    batch = _batch(tok, [DIALOGUE, DIALOGUE[:3]])
    opt = make_optimizer(learner, TrainConfig(lr=1e-2, weight_decay=0.0))
    before = {n: p.detach().clone() for n, p in learner.named_parameters()}
    loss0 = learner.loss(batch)[0].item()
    for _ in range(3):
        learner.update(batch, opt)
    changed = [n for n, p in learner.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)
    assert learner.loss(batch)[0].item() < loss0


def test_top_fraction_and_filtered_bc():
    assert top_fraction([1.0, 5.0, 3.0, 5.0], 0.5) == [1, 3]
    assert top_fraction([0.0, 1.0, 2.0], 0.1) == [2]
    with pytest.raises(ValueError):
        top_fraction([1.0], 0.0)
    fbc = FilteredBC(torch.nn.Linear(1, 1), fraction=0.5)
    assert fbc.prepare_dataset(["a", "b", "c", "d"], [0, 3, 1, 2]) == ["b", "d"]


def test_lr_schedule_and_batch_indices_are_step_keyed():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert np.array_equal(batch_indices(50, 8, 3, 7), batch_indices(50, 8, 3, 7))
    assert not np.array_equal(batch_indices(50, 8, 3, 7), batch_indices(50, 8, 3, 8))


def test_length_grouped_batches_pad_less_and_keep_every_row_equally_likely():
    n, bs, steps = 200, 8, 4000
    lengths = np.random.default_rng(0).integers(5, 300, size=n)
    counts = np.zeros(n)
    pad_grouped, pad_plain = [], []
    for step in range(steps):
        idx = batch_indices(n, bs, 1, step, lengths, group=8)
        assert len(set(idx.tolist())) == bs and np.all(np.diff(lengths[idx]) >= 0)  # a sorted run
        counts[idx] += 1
        plain = batch_indices(n, bs, 1, step)
        pad_grouped.append(lengths[idx].max() * bs - lengths[idx].sum())
        pad_plain.append(lengths[plain].max() * bs - lengths[plain].sum())
    assert np.mean(pad_grouped) < 0.4 * np.mean(pad_plain)
    expected = steps * bs / n  # 160 draws a row; a binomial sd of about 12
    assert np.all(np.abs(counts - expected) < 6 * np.sqrt(expected))
    assert abs(np.corrcoef(lengths, counts)[0, 1]) < 0.2  # no length is favoured
    # keyed by (seed, step); too few rows for two batches: the plain draw
    assert np.array_equal(batch_indices(n, bs, 1, 5, lengths, 8), batch_indices(n, bs, 1, 5, lengths, 8))
    assert np.array_equal(batch_indices(12, 8, 1, 5, lengths[:12], 8), batch_indices(12, 8, 1, 5))
    assert np.array_equal(batch_indices(n, bs, 1, 5, lengths, 0), batch_indices(n, bs, 1, 5))


def test_bootstrap_ci_seeded_and_brackets_mean():
    x = [0.0, 1.0, 2.0, 3.0, 4.0]
    lo, hi = bootstrap_ci(x, seed=0)
    assert (lo, hi) == bootstrap_ci(x, seed=0)
    assert lo < 2.0 < hi and lo >= 0.0 and hi <= 4.0
    assert bootstrap_ci([1.5]) == (1.5, 1.5)


def test_checkpoint_roundtrip_atomic_and_corrupt_detected(tmp_path, caplog):
    torch.manual_seed(0)
    tok = _tok()
    learner = BC(build_model(TINY, tok))
    opt = make_optimizer(learner, TrainConfig())
    learner.update(_batch(tok, [DIALOGUE]), opt)
    p1 = ckpt.save(tmp_path, 1, learner, opt, {"note": "a"})
    learner.update(_batch(tok, [DIALOGUE]), opt)
    p2 = ckpt.save(tmp_path, 2, learner, opt)
    assert not list(tmp_path.glob(".tmp*"))
    other = BC(build_model(TINY, tok))
    opt2 = make_optimizer(other, TrainConfig())
    state = ckpt.load(p2, other, opt2)
    assert state["step"] == 2
    for (n, a), (_, b) in zip(learner.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), n
    assert opt2.state_dict()["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])
    # truncate the newest: latest() falls back to step 1 and warns naming the file
    f = p2 / ckpt.MODEL_FILE
    f.write_bytes(f.read_bytes()[:100])
    with caplog.at_level("WARNING"):
        assert ckpt.latest(tmp_path) == p1
    assert str(f) in caplog.text
    with pytest.raises(ckpt.CheckpointError, match="checksum"):
        ckpt.load(p2, other)
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load(tmp_path / "nope", other)


def test_lm_agent_stops_at_eou_and_respects_budget():
    torch.manual_seed(0)
    tok = _tok()
    c = make_codec(tok)
    model = build_model(TINY, tok)
    ids = torch.tensor([[tok.bos_token_id, 5, 6]])
    att = torch.ones_like(ids)
    out = generate_utterances(model, ids, att, c.eou_id, SamplingConfig(greedy=False, max_utterance_tokens=5))
    assert len(out[0]) <= 5 and c.eou_id not in out[0]
    # a perturbation that forbids everything but <eou> gives empty utterances
    def only_eou(hidden, logits):
        assert hidden.shape == (logits.shape[0], 16)
        forced = torch.full_like(logits, float("-inf"))
        forced[:, c.eou_id] = 0.0
        return forced

    agent = LMAgent(model, c, SamplingConfig(greedy=False, max_utterance_tokens=4), perturb=only_eou)
    assert agent.act([DIALOGUE[:1], DIALOGUE[:3]]) == ["", ""]


def test_lm_agent_left_padding_matches_unpadded():
    torch.manual_seed(1)
    tok = _tok()
    c = make_codec(tok)
    agent = LMAgent(build_model(TINY, tok), c, SamplingConfig(greedy=True, max_utterance_tokens=6))
    both = agent.act([DIALOGUE[:1], DIALOGUE[:3]])
    assert both == [agent.act([DIALOGUE[:1]])[0], agent.act([DIALOGUE[:3]])[0]]


def test_evaluate_scripted_expert_beats_random():
    import envs  # noqa: F401

    env_id = "dialogue_rl/GuessWhich-v0"
    if env_id not in envs.env_ids():
        pytest.skip("GuessWhich not registered")
    from dialogue_rl.evaluation import make_env

    cls = type(make_env(env_id))
    exp = evaluate(ScriptedAgent(cls.policies()["expert"]), env_id, n_episodes=40, batch_size=20, progress=False)
    rnd = evaluate(ScriptedAgent(cls.policies()["random"]), env_id, n_episodes=40, batch_size=20, progress=False)
    assert exp.mean_return > rnd.mean_return
    assert exp.ci95[0] <= exp.mean_return <= exp.ci95[1] and len(exp.episodes) == 40


def test_lm_agent_keeps_the_recent_tokens_of_a_history_longer_than_its_context():
    torch.manual_seed(0)
    tok = _tok()
    c = make_codec(tok)
    model = build_model(ModelConfig("t", n_layer=1, n_head=2, n_embd=16, n_positions=32), tok)
    agent = LMAgent(model, c, SamplingConfig(greedy=True, max_utterance_tokens=6))
    long = DIALOGUE[:1] + [Turn("agent", "is it 2?", -1.0), Turn("env", "higher.")] * 10
    assert len(agent.encode(long)) > 32
    out = agent.act([long, DIALOGUE[:1]])
    assert len(out) == 2 and all(isinstance(u, str) for u in out)
