"""PPO parts on hand-computed numbers: KL penalty, GAE, clipping, value loss, KL controller."""

import pytest
import torch

from dialogue_rl.algos.ppo import (
    AdaptiveKLController, FixedKLController, clipped_surrogate, gae, gather_actions, kl_penalized_rewards,
    masked_whiten, state_kl, value_loss,
)
from envs.core import play_episode


def test_gather_actions_skips_environment_tokens():
    # 0 bos | 1 prefix | 2 agent | 3 agent <eou> | 4 env | 5 agent <eou>; a second row with one action
    batch = {"action_mask": torch.tensor([[0, 0, 1, 1, 0, 1], [0, 1, 0, 0, 0, 0]], dtype=torch.bool)}
    per_state = torch.tensor([[10.0, 11.0, 12.0, 13.0, 14.0], [20.0, 21.0, 22.0, 23.0, 24.0]])
    out, valid = gather_actions(batch, per_state)
    # row 0: actions at 2, 3, 5 -> states 1, 2, 4; row 1: action at 1 -> state 0
    assert out.tolist() == [[11.0, 12.0, 14.0], [20.0, 0.0, 0.0]]
    assert valid.tolist() == [[True, True, True], [True, False, False]]


def test_kl_penalty_per_token():
    r = kl_penalized_rewards(torch.tensor([[0.0, 1.0, 5.0]]), torch.tensor([[-1.0, -2.0, 0.0]]),
                             torch.tensor([[-1.5, -1.0, 0.0]]), torch.tensor([[True, True, False]]), 0.1)
    assert r[0].tolist() == pytest.approx([-0.05, 1.1, 0.0])


def test_gae_terminated_truncated_and_padded_rows():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 1.0, 1.5], [1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    dones = torch.tensor([[False, False, True], [True, False, False]])
    adv, ret = gae(rewards, values, dones, mask, gamma=0.5, lam=0.5)
    # row 0 by hand: d2 = 2 - 1.5 = .5; d1 = .5 * 1.5 - 1 = -.25, A1 = -.25 + .25 * .5 = -.125;
    # d0 = 1 + .5 - .5 = 1, A0 = 1 + .25 * (-.125) = .96875
    assert adv[0].tolist() == pytest.approx([0.96875, -0.125, 0.5])
    assert ret[0].tolist() == pytest.approx([1.46875, 0.875, 2.0])
    assert adv[1].tolist() == pytest.approx([2.0, 0.0, 0.0])
    # truncated: bootstrap V = 4 after the last token (and the padded row ignores its own)
    adv, _ = gae(rewards, values, torch.zeros_like(dones), mask, 0.5, 0.5, last_values=torch.tensor([4.0, 2.0]))
    assert adv[0].tolist() == pytest.approx([1.09375, 0.375, 2.5])
    assert adv[1].tolist() == pytest.approx([3.0 + 0.5 * 2.0 - 1.0, 0.0, 0.0])
    # lambda = 1 and gamma = 1: A_t = (sum of rewards from t) - V_t
    adv, _ = gae(rewards, values, dones, mask, 1.0, 1.0)
    assert adv[0].tolist() == pytest.approx([3.0 - 0.5, 2.0 - 1.0, 2.0 - 1.5])


def test_clipped_surrogate_values_and_zero_gradient_when_clipped():
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5])).requires_grad_()
    adv = torch.tensor([2.0, -2.0, 2.0, -2.0])
    loss = clipped_surrogate(logp, old, adv, eps=0.2)
    # rho 1.5, A 2: -min(3, 2.4); A -2: -min(-3, -2.4); rho .5, A 2: -min(1, 1.6); A -2: -min(-1, -1.6)
    assert loss.tolist() == pytest.approx([-2.4, 3.0, -1.0, 1.6])
    loss.sum().backward()
    # clipped terms (0 and 3) give no gradient; unclipped ones give -rho * A
    assert logp.grad.tolist() == pytest.approx([0.0, 3.0, -1.0, 0.0])
    within = clipped_surrogate(torch.tensor([0.1]), torch.tensor([0.0]), torch.tensor([1.0]), 0.2)
    assert within.item() == pytest.approx(-torch.exp(torch.tensor(0.1)).item())


def test_value_loss_plain_and_clipped():
    v, old, ret = torch.tensor([3.0, 0.5]), torch.tensor([1.0, 0.0]), torch.tensor([2.0, 2.0])
    assert value_loss(v, old, ret).tolist() == pytest.approx([0.5, 1.125])
    # clip 0.5: clipped predictions 1.5 and 0.5 -> max((1, .25), (2.25, 2.25)) / 2
    assert value_loss(v, old, ret, clip=0.5).tolist() == pytest.approx([0.5, 1.125])
    assert value_loss(torch.tensor([1.2]), torch.tensor([1.0]), torch.tensor([3.0]), clip=0.1).item() == \
        pytest.approx(0.5 * (3.0 - 1.1) ** 2)


def test_whiten_over_valid_entries():
    x = torch.tensor([[1.0, 3.0, 100.0]])
    w = masked_whiten(x, torch.tensor([[True, True, False]]))
    assert w[0].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-4)


def test_adaptive_kl_controller():
    c = AdaptiveKLController(value=0.2, target=6.0, horizon=10_000)
    assert c.update(12.0, 256) == pytest.approx(0.2 * (1 + 0.2 * 256 / 10_000))  # error clipped at +0.2
    v = c.value
    assert c.update(6.0, 256) == pytest.approx(v)  # on target: unchanged
    assert c.update(3.0, 256) == pytest.approx(v * (1 - 0.2 * 256 / 10_000))  # error clipped at -0.2
    assert c.update(6.6, 1000) == pytest.approx(v * (1 - 0.2 * 0.0256) * (1 + 0.1 * 0.1))
    assert FixedKLController(0.1).update(100.0, 10) == 0.1


# ------------------------------------------------------------------ the online learner
def _ppo(**kw):
    from dialogue_rl.algos.ppo import PPO
    from dialogue_rl.models import ModelConfig, build_model, build_word_tokenizer
    from envs.guess_which import GuessWhichEnv

    tok = build_word_tokenizer(GuessWhichEnv.vocabulary(), [])
    torch.manual_seed(0)
    model = build_model(ModelConfig("t", n_layer=1, n_head=2, n_embd=16, n_positions=256), tok)
    return PPO(model, **kw), tok


def test_online_iterations_update_the_policy_not_the_reference():
    from dialogue_rl.agents import banned_token_ids
    from dialogue_rl.models.tokenizer import codec as make_codec
    from dialogue_rl.train import TrainConfig

    learner, tok = _ppo(rollouts=6, minibatch=3, epochs=2, max_utterance_tokens=8)
    c = make_codec(tok)
    ref = [p.detach().clone() for p in learner.reference.parameters()]
    before = [p.detach().clone() for p in learner.model.parameters()]
    logged = []
    cfg = TrainConfig(steps=2, lr=1e-3, warmup_steps=1, log_every=1, checkpoint_every=10**6)
    stats = learner.train_online("dialogue_rl/GuessWhich-v0", {}, c, tok.pad_token_id, cfg, torch.device("cpu"),
                                 banned_ids=banned_token_ids(c, tok), log_fn=lambda m, s: logged.append((s, m)))
    assert [s for s, _ in logged] == [1, 2]
    first = logged[0][1]
    # the first rollout is played by the reference itself: zero KL, and rewards are the env's
    assert first["train/kl_to_ref"] == pytest.approx(0.0, abs=1e-5)
    assert first["train/reward_score"] == pytest.approx(first["train/episode_return"], abs=1e-5)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats["final_metrics"].values())
    assert all(m["train/rss_mb"] > 10 for _, m in logged)  # resident size after each iteration, MiB
    assert all(torch.equal(a, b) for a, b in zip(learner.reference.parameters(), ref))
    assert any(not torch.equal(a, b) for a, b in zip(learner.model.parameters(), before))
    assert not any(p.requires_grad for p in learner.reference.parameters())


def test_resumed_online_run_gives_the_parameters_of_an_uninterrupted_one(tmp_path):
    """3 iterations straight, against 2 iterations, a new process-like learner and resume=true
    for the third: same policy, value head, KL coefficient (adaptive) and optimiser state."""
    from dialogue_rl.agents import banned_token_ids
    from dialogue_rl.models.tokenizer import codec as make_codec
    from dialogue_rl.train import TrainConfig

    class Killed(Exception):
        pass

    def crash_at(n):  # the log call of iteration n comes before its checkpoint
        def log_fn(m, step):
            if step == n:
                raise Killed
        return log_fn

    def run(ckdir, resume, log_fn=None):
        learner, tok = _ppo(rollouts=4, minibatch=2, epochs=2, max_utterance_tokens=6, kl_target=0.5, kl_coef=0.1)
        c = make_codec(tok)
        cfg = TrainConfig(steps=3, lr=1e-3, warmup_steps=0, log_every=1, checkpoint_every=1)
        stats = learner.train_online("dialogue_rl/GuessWhich-v0", {}, c, tok.pad_token_id, cfg, torch.device("cpu"),
                                     banned_ids=banned_token_ids(c, tok), checkpoint_dir=ckdir, resume=resume,
                                     log_fn=log_fn)
        return learner, stats

    straight, _ = run(tmp_path / "a", False)
    with pytest.raises(Killed):
        run(tmp_path / "b", False, crash_at(3))
    resumed, stats = run(tmp_path / "b", True)
    assert stats["start_step"] == 2
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert straight.kl.value == resumed.kl.value != 0.1  # the controller moved, and was restored exactly
    ref, start = straight.reference.state_dict(), _ppo()[0].model.state_dict()  # the reference is still the start
    assert all(torch.equal(ref[k], start[k]) for k in ref)


def test_kl_limit_takes_a_kl_step_and_ends_the_iteration(monkeypatch):
    from dialogue_rl.agents import banned_token_ids
    from dialogue_rl.algos.ppo import PPO
    from dialogue_rl.models.tokenizer import codec as make_codec
    from dialogue_rl.train import TrainConfig

    real = PPO.loss_and_kl

    def reading_kl_one(self, batch):  # the policy's KL reads 1.0 on every minibatch
        loss, kl, m = real(self, batch)
        return loss, kl, {**m, "kl_ref_update": 1.0}

    monkeypatch.setattr(PPO, "loss_and_kl", reading_kl_one)
    cfg = TrainConfig(steps=2, lr=1e-3, warmup_steps=0, log_every=1, checkpoint_every=10**6)
    runs = {}
    for limit in (0.0, 0.5, 2.0):
        learner, tok = _ppo(rollouts=6, minibatch=3, epochs=3, max_utterance_tokens=8, kl_limit=limit)
        c = make_codec(tok)
        logged = []
        learner.train_online("dialogue_rl/GuessWhich-v0", {}, c, tok.pad_token_id, cfg, torch.device("cpu"),
                             banned_ids=banned_token_ids(c, tok), log_fn=lambda m, s: logged.append(m))
        runs[limit] = [m["train/updates"] for m in logged]
    assert runs == {0.0: [6, 6], 0.5: [1, 1], 2.0: [6, 6]}  # 3 epochs of 2 minibatches, or one KL step
    with pytest.raises(ValueError, match="kl_limit"):
        _ppo(kl_target=2.0, kl_limit=1.0)


def _prepared_novice_batch():
    """A PPO learner (its policy is its reference) and two prepared GuessWhich novice dialogues."""
    from dialogue_rl.data.views import collate_tokens, tokenize_dialogue
    from dialogue_rl.models.tokenizer import codec as make_codec
    from envs.guess_which import GuessWhichEnv

    learner, tok = _ppo()
    c = make_codec(tok)
    env = GuessWhichEnv()
    rows = [{"seed": s, "return": 0.0, "terminated": True,
             "turns": [t.to_dict() for t in play_episode(env, env.policies()["novice"], s).turns]} for s in (0, 1)]
    return learner, learner.prepare(collate_tokens([tokenize_dialogue(r, c) for r in rows], tok.pad_token_id))


def _move_away_from_the_reference(learner) -> None:
    with torch.no_grad():
        for p in learner.model.parameters():
            p.add_(0.05 * torch.randn_like(p))


def test_a_step_on_the_state_kl_moves_the_policy_back_towards_the_reference():
    learner, batch = _prepared_novice_batch()
    _move_away_from_the_reference(learner)
    _, kl, m = learner.loss_and_kl(batch)
    kl.backward()
    with torch.no_grad():
        for p in learner.model.parameters():
            if p.grad is not None:
                p.sub_(0.05 * p.grad)
    _, kl_after, _ = learner.loss_and_kl(batch)
    assert 0 < kl_after.item() < m["kl_ref_update"]


def test_state_kl_hand_computed_and_zero_at_the_reference():
    # two episodes; agent tokens at positions 2 and 3 of row 0, position 1 of row 1
    batch = {"action_mask": torch.tensor([[0, 0, 1, 1], [0, 1, 0, 0]], dtype=torch.bool)}
    logits = torch.zeros(2, 4, 2)
    ref = torch.zeros(2, 4, 2)
    logits[0, 1] = torch.tensor([0.0, torch.log(torch.tensor(3.0))])  # p = (1/4, 3/4) vs (1/2, 1/2)
    logits[0, 3] = torch.tensor([5.0, -5.0])  # position 3 predicts nothing: not counted
    expected = 0.25 * torch.log(torch.tensor(0.5)) + 0.75 * torch.log(torch.tensor(1.5))
    kl = state_kl(logits, ref, batch)
    assert kl[0].item() == pytest.approx(expected.item(), rel=1e-6) and kl[1].item() == pytest.approx(0.0)


def test_kl_of_the_update_is_zero_at_the_reference_and_matches_state_kl():
    learner, batch = _prepared_novice_batch()
    assert torch.allclose(batch["kl"], torch.zeros(2), atol=1e-6)
    _, m = learner.loss(batch)
    assert m["kl_ref_update"] == pytest.approx(0.0, abs=1e-6)
    _move_away_from_the_reference(learner)
    _, m = learner.loss(batch)
    with torch.no_grad():
        expected = state_kl(learner._forward(batch)[2], learner._reference_logits(batch), batch).mean()
    assert m["kl_ref_update"] == pytest.approx(float(expected), rel=1e-5) and m["kl_ref_update"] > 0


def test_cached_reference_gives_the_kls_of_a_rerun_reference_without_running_it(monkeypatch):
    """prepare() keeps the frozen reference's log-probs at the agent states; every later KL of
    the iteration (the update's, the line search's) reads them, equal to rerunning it."""
    learner, batch = _prepared_novice_batch()
    n_states = int(batch["action_mask"][:, 1:].sum())
    assert batch["ref_state_logp"].shape == (n_states, learner.model.config.vocab_size)
    _move_away_from_the_reference(learner)
    plain = {k: v for k, v in batch.items() if k != "ref_state_logp"}  # what cache_reference=false stores
    rerun_kl, rerun_update = learner.mean_state_kl([plain]), learner.loss(plain)[1]["kl_ref_update"]
    monkeypatch.setattr(learner, "_reference_logits", lambda b: pytest.fail("the reference ran again"))
    assert learner.mean_state_kl([batch]) == pytest.approx(rerun_kl, rel=1e-6) and rerun_kl > 0
    assert learner.loss(batch)[1]["kl_ref_update"] == pytest.approx(rerun_update, rel=1e-6)
    monkeypatch.undo()
    learner.cache_reference = False
    assert "ref_state_logp" not in learner.prepare(plain)


@pytest.mark.parametrize("detach", [False, True])
def test_detach_value_keeps_the_value_loss_out_of_the_backbone(detach):
    learner, tok = _ppo(detach_value=detach)
    ids = torch.tensor([[tok.bos_token_id or 0, 5, 6, 7]])
    _, v, _ = learner._forward({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    v.sum().backward()
    backbone = [p.grad for p in learner.model.transformer.h.parameters()]
    assert all(p.grad is not None for p in learner.v_head.parameters())
    assert all(g is None for g in backbone) == detach


def test_learned_reward_sits_on_the_last_agent_token():
    learner, tok = _ppo(kl_coef=0.0, whiten=False, gamma=1.0, lam=1.0)
    from dialogue_rl.data.views import collate_tokens, tokenize_dialogue
    from dialogue_rl.models.tokenizer import codec as make_codec

    row = {"return": 0.5, "terminated": True, "turns": [
        {"speaker": "env", "text": "a picture of 1 object, a big object.", "reward": 0.0},
        {"speaker": "agent", "text": "what color is the object?", "reward": 0.25},
        {"speaker": "env", "text": "red.", "reward": 0.0},
        {"speaker": "agent", "text": "is it a cube?", "reward": 0.25}]}
    batch = collate_tokens([tokenize_dialogue(row, make_codec(tok))], tok.pad_token_id)
    env = learner.prepare(batch)
    learned = learner.prepare(batch, reward_fn=lambda b: torch.tensor([3.0]))
    n = int(env["mask"].sum())
    assert env["score"].item() == pytest.approx(0.5) and learned["score"].item() == pytest.approx(3.0)
    # gamma = lambda = 1, no KL: R_t is the reward-to-go (the env's: 0.5 then 0.25 after the first <eou>)
    assert learned["returns"][0, :n].tolist() == pytest.approx([3.0] * n)
    assert env["returns"][0, 0].item() == pytest.approx(0.5) and env["returns"][0, n - 1].item() == pytest.approx(0.25)


def test_ppo_registered_with_a_schema():
    from dialogue_rl.algos import LEARNERS, PPO
    from dialogue_rl.config import ALGO_SCHEMAS

    assert LEARNERS["ppo"] is PPO and "ppo" in ALGO_SCHEMAS and PPO.online and PPO.needs_bc_init


@pytest.mark.parametrize("kw", [{"temperature": 0.7}, {"top_k": 5}])
def test_rollout_sampling_other_than_the_policy_is_refused(kw):
    """The ratio and KL use softmax(logits): rollouts at another temperature or top-k would
    make every update off-policy, so the learner refuses them with the fix in the message."""
    with pytest.raises(ValueError, match="algo.temperature=1.0 algo.top_k=0"):
        _ppo(**kw)


def test_enforce_kl_limit_backtracks_towards_the_start_until_under_the_limit():
    learner, batch = _prepared_novice_batch()
    start = [p.detach().clone() for p in learner.model.parameters()]  # the reference: KL 0
    _move_away_from_the_reference(learner)
    far = learner.mean_state_kl([batch])
    optimizer = torch.optim.SGD(learner.model.parameters(), lr=0.0)
    # a limit the moved policy breaks: the line search keeps part of the step, below the limit
    kl, lam = _with_limit(learner, far / 3).enforce_kl_limit([batch], start, optimizer)
    assert kl < far / 3 and 0 < lam < 1
    assert kl == pytest.approx(learner.mean_state_kl([batch]))
    # a limit above the KL leaves the parameters alone
    moved = [p.detach().clone() for p in learner.model.parameters()]
    kl2, lam2 = _with_limit(learner, 10 * far).enforce_kl_limit([batch], start, optimizer)
    assert lam2 == 1.0 and kl2 == pytest.approx(kl)
    assert all(torch.equal(a, b) for a, b in zip(moved, learner.model.parameters()))


def test_enforce_kl_limit_takes_kl_steps_when_the_start_is_over_the_limit():
    learner, batch = _prepared_novice_batch()
    _move_away_from_the_reference(learner)
    start = [p.detach().clone() for p in learner.model.parameters()]  # the start itself is far away
    far = learner.mean_state_kl([batch])
    optimizer = torch.optim.SGD(learner.model.parameters(), lr=0.05)
    kl, lam = _with_limit(learner, 0.9 * far).enforce_kl_limit([batch], start, optimizer, max_kl_steps=50)
    assert lam == 0.0 and kl < 0.9 * far


def _with_limit(learner, limit: float):
    learner.kl_limit = limit
    return learner
