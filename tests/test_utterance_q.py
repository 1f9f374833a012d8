"""Per-utterance Q learning (CHAI-style): hand-computed targets and penalty, data view,
candidate cache, update, checkpointing, and stitching on the toy task."""

import math
from pathlib import Path

import pytest
import torch

from dialogue_rl import checkpoint as ckpt
from dialogue_rl.agents import SamplingConfig
from dialogue_rl.algos import LEARNERS
from dialogue_rl.algos.bc import bc_loss
from dialogue_rl.algos.utterance_q import (
    CandidateCache,
    UtteranceQ,
    bellman_targets,
    candidate_set,
    conservative_penalty,
    packed_mask,
)
from dialogue_rl.data import flatten_transitions
from dialogue_rl.models import ModelConfig, build_model, build_word_tokenizer
from dialogue_rl.models.tokenizer import codec as make_codec
from envs.core import Turn
from tests.toy_envs import StitchEnv, stitch_rows

TINY = ModelConfig("t", n_layer=1, n_head=2, n_embd=16, n_positions=64)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread avoids OpenMP spin-waits on a busy shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _learner(rows=None, **kw):
    tok = build_word_tokenizer(StitchEnv.vocabulary(), [])
    c = make_codec(tok)
    torch.manual_seed(0)
    kw = {"max_utterance_tokens": 3, "n_candidates": 4, **kw}
    learner = UtteranceQ(build_model(TINY, tok), **kw)
    examples = learner.make_examples(rows if rows is not None else stitch_rows(20), c, 64)
    return learner, examples, tok, c


def _utt(c, text):
    return tuple(c.encode(text)) + (c.eou_id,)


# ------------------------------------------------------------------ equations
def test_target_is_max_over_candidates_of_min_over_target_heads():
    # state 0: candidates (Q1, Q2) = (1, 5), (4, 3), (9, -2) -> mins 1, 3, -2 -> max 3
    # state 1: one real candidate (2, 2); the padded one (100, 100) is masked out
    next_q = torch.tensor([[[1.0, 5.0], [4.0, 3.0], [9.0, -2.0]],
                           [[2.0, 2.0], [100.0, 100.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    y = bellman_targets(torch.tensor([0.5, 1.0]), torch.tensor([False, False]), next_q, mask, gamma=0.9)
    assert y.tolist() == pytest.approx([0.5 + 0.9 * 3.0, 1.0 + 0.9 * 2.0])


def test_terminal_transitions_do_not_bootstrap():
    next_q = torch.full((2, 2, 2), 50.0)
    mask = torch.tensor([[True, True], [False, False]])  # row 1: no next state at all
    y = bellman_targets(torch.tensor([0.25, -1.0]), torch.tensor([True, False]), next_q, mask, gamma=0.99)
    assert y.tolist() == pytest.approx([0.25, -1.0])
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


def test_conservative_penalty_subtracts_q_of_the_dataset_utterance():
    q = torch.tensor([[2.0, 1.0, 3.0, 99.0]])  # column 0 = u_data; column 3 is padding
    mask = torch.tensor([[True, True, True, False]])
    pen = conservative_penalty(q, mask)
    lse = math.log(math.exp(2) + math.exp(1) + math.exp(3))
    assert pen.item() == pytest.approx(lse - 2.0)
    # the original CHAI code's term (no subtraction) would be lse itself: ours is not
    assert pen.item() != pytest.approx(lse)
    # a constant shift of all Q values leaves the penalty unchanged; it is 0 when u_data is the only candidate
    assert conservative_penalty(q + 7.0, mask).item() == pytest.approx(pen.item())
    assert conservative_penalty(q[:, :1], mask[:, :1]).item() == pytest.approx(0.0)


def test_candidate_set_puts_data_first_without_duplicates():
    a, b, c = (1, 2), (3, 2), (4, 2)
    assert candidate_set(b, [a, b, a, c]) == [b, a, c]
    assert candidate_set(None, [a, a, c]) == [a, c]


# ------------------------------------------------------------------ data
def test_transitions_follow_the_per_utterance_view():
    rows = stitch_rows(20)
    truncated = dict(rows[0], terminated=False)
    learner, ex, tok, c = _learner(rows + [truncated])
    ref = flatten_transitions(rows + [truncated])
    assert len(ex) == len(ref)
    for e, r in zip(ex, ref):
        assert e["reward"] == pytest.approx(r["reward"]) and e["done"] == r["done"]
        assert c.decode(e["action"][:-1].tolist()) == r["action"] and e["action"][-1] == c.eou_id
        assert tuple(e["state"][-2:]) == tuple(c.speaker_prefix("agent"))  # the agent's prompt
    first, second = ex[0], ex[1]
    assert tuple(second["state"]) == tuple(first["next_state"])
    assert tuple(first["next_action"]) == tuple(second["action"])  # the dataset's next utterance
    assert second["next_state"] is None and second["done"]
    last = ex[len(ex) - 1]  # the truncated copy: bootstraps from the real next state, no next utterance
    assert not last["done"] and last["next_action"] is None
    assert tuple(last["next_state"][-2:]) == tuple(c.speaker_prefix("agent"))
    batch = learner.collate([ex[i] for i in range(4)], tok.pad_token_id)
    assert batch["attention_mask"].sum().item() == sum(len(ex[i]["state"]) + len(ex[i]["action"]) for i in range(4))


def test_target_candidates_include_the_dataset_next_utterance(monkeypatch):
    learner, ex, tok, c = _learner()
    junk = [_utt(c, "or")] * learner.n_candidates
    monkeypatch.setattr(learner, "sample_utterances", lambda prompts, n, *a, **k: [list(junk) for _ in prompts])
    seen = []
    real_q_values = learner.q_values

    def spy(states, sets, heads, lm=False):
        seen.append((heads, [list(s) for s in sets]))
        return real_q_values(states, sets, heads, lm)

    monkeypatch.setattr(learner, "q_values", spy)
    batch = learner.collate([ex[i] for i in range(6)], tok.pad_token_id)
    learner.loss(batch)
    (h_cur, cur_sets), (h_next, next_sets) = seen
    assert h_cur is learner.q_heads and h_next is learner.target_q_heads
    assert [s[0] for s in cur_sets] == batch["actions"]  # C(s) = {u_data} ∪ U(s), data first
    wanted = [a for a, d in zip(batch["next_actions"], batch["dones"].tolist()) if not d]
    assert [s[0] for s in next_sets] == wanted and all(junk[0] in s for s in next_sets)


# ------------------------------------------------------------------ candidate cache
def test_candidate_cache_is_reused_and_refreshed():
    cache = CandidateCache(refresh_every=2)
    cache.put(b"k", [(1,)])
    assert cache.get(b"k") == [(1,)] and cache.get(b"k") is None  # put counts as the first use
    assert CandidateCache(0).get(b"k") is None

    learner, ex, _, _ = _learner(n_candidates=3)
    s1, s2 = tuple(ex[0]["state"].tolist()), tuple(ex[1]["state"].tolist())
    first = learner.candidates([s1, s2, s1])
    assert learner.stats.candidates_sampled == 6 and first[0] == first[2]  # one sampling per distinct state
    for _ in range(3):
        assert learner.candidates([s1, s2]) == first[:2]
    assert learner.stats.candidates_sampled == 6 and learner.stats.sampling_calls == 1

    learner, *_ = _learner(n_candidates=3, refresh_every=2)
    learner.candidates([s1])
    learner.candidates([s1])
    assert learner.stats.candidates_sampled == 3
    learner.candidates([s1])  # third use: resampled
    assert learner.stats.candidates_sampled == 6
    rep = learner.sampling_report()
    assert rep["candidates_per_s"] > 0 and rep["cache_hit_rate"] == pytest.approx(1 / 3)


# ------------------------------------------------------------------ model parts
def test_encoders_agree_and_bc_term_matches_bc_loss():
    learner, ex, tok, c = _learner()
    batch = learner.collate([ex[i] for i in range(5)], tok.pad_token_id)
    sets = [[a, _utt(c, "up"), _utt(c, "left or right")] for a in batch["actions"]]
    assert learner.encoder == "packed"
    q1, m1, nll1 = learner.q_values(batch["states"], sets, learner.q_heads, lm=True)
    logits = learner.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert nll1.item() == pytest.approx(bc_loss(logits, batch).item(), rel=1e-4)
    for encoder in ("shared_prefix", "full"):
        learner.encoder = encoder
        q2, m2, nll2 = learner.q_values(batch["states"], sets, learner.q_heads, lm=True)
        assert torch.equal(m1, m2) and torch.allclose(q1, q2, atol=1e-5), encoder
        assert nll2.item() == pytest.approx(nll1.item(), rel=1e-4), encoder
    learner.encoder = "packed"  # the eager implementation takes the additive form of the mask
    learner.model.set_attn_implementation("eager")
    q3, _, nll3 = learner.q_values(batch["states"], sets, learner.q_heads, lm=True)
    assert torch.allclose(q1, q3, atol=1e-5) and nll3.item() == pytest.approx(nll1.item(), rel=1e-4)


def test_packed_mask_lets_each_candidate_see_the_history_and_itself_only():
    seg = torch.tensor([[0, 0, 1, 1, 2, -1]])  # history of 2, candidates of 2 and 1, padding
    allowed = packed_mask(seg)[0, 0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],  # candidate 2 does not see candidate 1
        [1, 1, 0, 0, 0, 0],  # padding sees the history only (no empty row)
    ]
    additive = packed_mask(seg, torch.float32)[0, 0]
    assert additive[4, 2] == torch.finfo(torch.float32).min and additive[4, 4] == 0


def test_one_update_changes_q_heads_and_moves_targets_not_the_frozen_model():
    learner, ex, tok, _ = _learner(polyak=0.5, alpha=0.5)
    batch = learner.collate([ex[i] for i in range(8)], tok.pad_token_id)
    frozen = {id(p) for p in learner.bc_model.parameters()} | {id(p) for p in learner.target_q_heads.parameters()}
    assert not frozen & {id(p) for p in learner.trainable_parameters()}
    opt = torch.optim.AdamW(learner.trainable_parameters(), lr=1e-2)
    heads = [p.detach().clone() for p in learner.q_heads.parameters()]
    targets = [p.detach().clone() for p in learner.target_q_heads.parameters()]
    bc = [p.detach().clone() for p in learner.bc_model.parameters()]
    loss, m = learner.loss(batch)
    assert loss.item() == pytest.approx(m["td_loss"] + m["cql_loss"] + learner.bc_weight * m["bc_loss"], rel=1e-5)
    learner.update(batch, opt)
    assert all(not torch.equal(a, b) for a, b in zip(learner.q_heads.parameters(), heads))
    assert all(not torch.equal(a, b) for a, b in zip(learner.target_q_heads.parameters(), targets))
    assert all(torch.equal(a, b) for a, b in zip(learner.bc_model.parameters(), bc))
    assert not learner.bc_model.training and learner.training


def test_checkpoint_restores_the_frozen_sampler(tmp_path):
    learner, _, tok, _ = _learner()
    with torch.no_grad():
        for p in learner.model.parameters():
            p.add_(1.0)  # the trained backbone drifts away from the BC copy
    path = ckpt.save(tmp_path, 1, learner)
    torch.manual_seed(1)
    fresh = UtteranceQ(build_model(TINY, tok), max_utterance_tokens=3, n_candidates=4)
    ckpt.load(path, fresh)
    for a, b in zip(fresh.bc_model.parameters(), learner.bc_model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(fresh.model.parameters(), learner.model.parameters()):
        assert torch.equal(a, b)


def test_agent_acts_in_batch_in_both_modes():
    history = [Turn("env", "choose left or right.")]
    for mode in ("argmax", "softmax"):
        learner, _, _, c = _learner(act_mode=mode, act_candidates=5)
        agent = learner.make_agent(c, SamplingConfig(greedy=True, max_utterance_tokens=3), "cpu", 0)
        agent.reset([], [])
        out = agent.act([history, history + [Turn("agent", "left"), Turn("env", "ok.")], history], [0, 1, 2])
        assert len(out) == 3 and all(isinstance(u, str) for u in out)
        assert learner.stats.candidates_sampled == 15


def test_registered_and_configurable():
    from hydra import compose, initialize_config_dir

    from dialogue_rl.config import algo_kwargs, register_configs

    assert LEARNERS["utterance_q"] is UtteranceQ
    register_configs()
    conf = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose("train", overrides=["algo=utterance_q", "algo.n_candidates=5"])
        with pytest.raises(Exception, match="n_candidatez"):
            compose("train", overrides=["algo=utterance_q", "algo.n_candidatez=5"])
    kw = algo_kwargs(cfg.algo)
    assert kw["n_candidates"] == 5 and kw["polyak"] == 0.005
    learner, *_ = _learner(**{**kw, "max_utterance_tokens": 3})
    assert learner.n_candidates == 5 and learner.act_candidates == 5


# ------------------------------------------------------------------ stitching
def _play(agent, episodes: int = 5) -> float:
    from tests.toy_envs import stitch_mean_return

    return stitch_mean_return(agent, episodes)


def test_sample_and_rank_stitches_to_the_optimum_where_bc_does_not():
    from dialogue_rl.agents import LMAgent
    from dialogue_rl.algos import BC
    from dialogue_rl.data import collate_tokens, tokenize_dataset
    from dialogue_rl.train import TrainConfig, fit

    torch.manual_seed(0)
    tok = build_word_tokenizer(StitchEnv.vocabulary(), [])
    c = make_codec(tok)
    rows = stitch_rows()
    model = build_model(ModelConfig("t", n_layer=1, n_head=2, n_embd=32, n_positions=64), tok)
    cfg = TrainConfig(steps=150, batch_size=32, lr=3e-3, warmup_steps=20, log_every=1000, checkpoint_every=10**9)
    fit(BC(model), tokenize_dataset(rows, c), lambda e: collate_tokens(e, tok.pad_token_id), cfg,
        torch.device("cpu"), progress=False)
    sampling = SamplingConfig(greedy=True, max_utterance_tokens=4)
    assert _play(LMAgent(model, c, sampling)) == 0.0  # BC follows the majority at both turns

    learner = UtteranceQ(model, gamma=0.99, alpha=0.1, polyak=0.05, n_candidates=8, temperature=1.0,
                         refresh_every=4, max_utterance_tokens=4, act_candidates=32)
    examples = learner.make_examples(rows, c, 64)
    cfg = TrainConfig(steps=150, batch_size=32, lr=3e-3, warmup_steps=10, log_every=1000, checkpoint_every=10**9)
    stats = fit(learner, examples, lambda e: learner.collate(e, tok.pad_token_id), cfg, torch.device("cpu"),
                progress=False)
    assert _play(learner.make_agent(c, sampling, "cpu", 0)) == 2.0
    rep = learner.sampling_report(stats["wall_s"])
    assert rep["candidates_sampled"] > 0 and 0 < rep["sampling_fraction"] < 1


def test_long_histories_are_cut_to_the_position_table():
    tok = build_word_tokenizer(StitchEnv.vocabulary(), [])
    c = make_codec(tok)
    torch.manual_seed(0)
    learner = UtteranceQ(build_model(ModelConfig("t", n_layer=1, n_head=2, n_embd=16, n_positions=16), tok),
                         max_utterance_tokens=3, n_candidates=2)
    long_state, short_state = tuple(range(5, 19)), (5, 6)  # 14 tokens: + a 4-token utterance > 16
    sets = [[_utt(c, "up"), _utt(c, "left or right")], [_utt(c, "up down up down up down"), _utt(c, "up")]]
    q1, _, _ = learner.q_values([long_state, short_state], sets, learner.q_heads)
    learner.encoder = "full"
    q2, _, _ = learner.q_values([long_state, short_state], sets, learner.q_heads)
    assert torch.allclose(q1, q2, atol=1e-5) and torch.isfinite(q1).all()
    assert len(learner.sample_utterances([long_state], 2)[0]) == 2


def test_needs_a_bc_run_and_finds_the_one_of_its_sweep(tmp_path):
    from omegaconf import OmegaConf

    from dialogue_rl.experiment import ConfigError, _sweep_bc_run, _sweep_sibling

    uq = OmegaConf.create({"algo": {"name": "utterance_q"}})
    run = tmp_path / "guess_which_utterance_q_s1"
    with pytest.raises(ConfigError, match="init_from"):
        _sweep_bc_run(uq, run)
    bc = tmp_path / "guess_which_bc_s1"
    bc.mkdir()
    (bc / "results.json").write_text("{}")
    assert _sweep_bc_run(uq, run) == bc
    assert _sweep_bc_run(OmegaConf.create({"algo": {"name": "ilql"}}), tmp_path / "guess_which_ilql_s1") is None
    # a labelled variant (conf/algo/ppo_learned.yaml) finds the BC run and the reward model of its sweep
    learned = OmegaConf.create({"algo": {"name": "ppo", "label": "ppo_learned"}})
    assert _sweep_bc_run(learned, tmp_path / "guess_which_ppo_learned_s1") == bc
    assert _sweep_sibling(learned, tmp_path / "guess_which_ppo_learned_s1", "reward_model") is None
    rm = tmp_path / "guess_which_reward_model_s1"
    rm.mkdir()
    (rm / "results.json").write_text("{}")
    assert _sweep_sibling(learned, tmp_path / "guess_which_ppo_learned_s1", "reward_model") == rm
    # init_run names another supervised run to start from (conf/algo/utterance_q_fbc.yaml)
    fbc_uq = OmegaConf.create({"algo": {"name": "utterance_q", "label": "utterance_q_fbc", "init_run": "filtered_bc"}})
    with pytest.raises(ConfigError, match="filtered_bc"):
        _sweep_bc_run(fbc_uq, tmp_path / "guess_which_utterance_q_fbc_s1")
    fbc = tmp_path / "guess_which_filtered_bc_s1"
    fbc.mkdir()
    (fbc / "results.json").write_text("{}")
    assert _sweep_bc_run(fbc_uq, tmp_path / "guess_which_utterance_q_fbc_s1") == fbc


def test_utterance_q_fbc_config_composes_and_builds_the_learner():
    from hydra import compose, initialize_config_dir

    from dialogue_rl.config import algo_kwargs, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["algo=utterance_q_fbc"])
    assert cfg.algo.name == "utterance_q" and cfg.algo.label == "utterance_q_fbc"
    assert cfg.algo.init_run == "filtered_bc" and "init_run" not in algo_kwargs(cfg.algo)
    from dialogue_rl.experiment import make_learner

    tok = build_word_tokenizer(StitchEnv.vocabulary(), [])
    learner = make_learner(cfg.algo, build_model(TINY, tok))
    assert isinstance(learner, UtteranceQ) and learner.n_candidates == cfg.algo.n_candidates
