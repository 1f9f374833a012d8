"""Cross-turn KV-cached rollouts give the re-encoding agent's greedy utterances."""

import pytest
import torch

from dialogue_rl.agents import LMAgent, SamplingConfig
from dialogue_rl.evaluation import evaluate, make_env
from dialogue_rl.models import ModelConfig, build_model, build_word_tokenizer
from dialogue_rl.models.tokenizer import codec as make_codec
from dialogue_rl.rollout import Rollout, common_prefix, generate_utterances, left_pad
from envs.core import Turn

GUESS = "dialogue_rl/GuessWhich-v0"
MAZE = "dialogue_rl/MazeFO-v0"


def _setup(env_id: str, n_positions: int = 512, seed: int = 0):
    torch.manual_seed(seed)
    tok = build_word_tokenizer(type(make_env(env_id)).vocabulary())
    model = build_model(ModelConfig("t", n_layer=2, n_head=2, n_embd=32, n_positions=n_positions), tok)
    # A context-dependent perturbation that makes greedy utterances vary from turn to turn
    # and from row to row (a random model alone tends to repeat one token): a fixed random
    # projection of the last hidden state, as ILQL's ``beta * (Q - V)`` would add.
    gen = torch.Generator().manual_seed(seed)
    proj = torch.randn(32, len(tok), generator=gen) * 3.0

    def perturb(hidden: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return logits + hidden.float() @ proj

    return tok, make_codec(tok), model, perturb


def _cached_and_plain(tok, c, model, perturb, max_tokens):
    """Greedy agents with the cross-turn cache and re-encoding every history, same settings."""
    sampling = SamplingConfig(greedy=True, max_utterance_tokens=max_tokens)
    ban = [tok.pad_token_id, tok.bos_token_id, tok.unk_token_id]
    return tuple(LMAgent(model, c, sampling, perturb=perturb, banned_ids=ban, cross_turn=x) for x in (True, False))


def _transcripts(agent, env_id, n=6, batch_size=6, kwargs=None):
    res = evaluate(agent, env_id, kwargs, n_episodes=n, batch_size=batch_size, progress=False)
    return [e["transcript"] for e in res.episodes], res


@pytest.mark.parametrize("env_id", [GUESS, MAZE])
def test_cross_turn_cache_matches_reencoding_on_episodes(env_id):
    tok, c, model, perturb = _setup(env_id)
    cached, plain = _cached_and_plain(tok, c, model, perturb, 8)
    a, res = _transcripts(cached, env_id)
    b, _ = _transcripts(plain, env_id)
    assert a == b
    assert res.mean_length >= 3  # really multi-turn
    # the cache did its job: most prompt tokens were reused, not re-run
    st = cached.rollout.stats
    assert st.encoded_tokens < 0.6 * st.prompt_tokens
    assert plain.rollout.stats.encoded_tokens == plain.rollout.stats.prompt_tokens
    # utterances differ between rows and turns (the test is not vacuous)
    utts = {t["text"] for e in res.episodes for t in e["turns"] if t["speaker"] == "agent"}
    assert len(utts) > 3


def test_batch_gives_each_rows_output_alone():
    tok, c, model, perturb = _setup(GUESS, seed=1)
    sampling = SamplingConfig(greedy=True, max_utterance_tokens=8)
    batched, _ = _transcripts(LMAgent(model, c, sampling, perturb=perturb), GUESS, n=5, batch_size=5)
    alone, _ = _transcripts(LMAgent(model, c, sampling, perturb=perturb), GUESS, n=5, batch_size=1)
    assert batched == alone


def test_histories_longer_than_the_context_fall_back_to_the_truncated_window():
    # 64 positions minus an 8-token budget: GuessWhich histories outgrow the window after
    # a few turns, so prompts are left-truncated and the window slides every turn.
    tok, c, model, perturb = _setup(GUESS, n_positions=64, seed=2)
    sampling = SamplingConfig(greedy=True, max_utterance_tokens=8)
    cached = LMAgent(model, c, sampling, perturb=perturb)
    plain = LMAgent(model, c, sampling, perturb=perturb, cross_turn=False)
    a, res = _transcripts(cached, GUESS, n=4, batch_size=4)
    b, _ = _transcripts(plain, GUESS, n=4, batch_size=4)
    assert a == b
    longest = max(len(cached.encode([Turn.from_dict(t) for t in e["turns"]])) for e in res.episodes)
    assert longest > 64


def test_rollout_reuses_prefixes_across_dropped_reordered_and_edited_rows():
    torch.manual_seed(3)
    tok, c, model, _ = _setup(GUESS, seed=3)
    s = SamplingConfig(greedy=True, max_utterance_tokens=5)
    v = len(tok)
    g = torch.Generator().manual_seed(0)

    def rand(n):
        return torch.randint(4, v, (n,), generator=g).tolist()

    first = {0: rand(7), 1: rand(3), 2: rand(12)}
    cached, plain = Rollout(model, c.eou_id, s), Rollout(model, c.eou_id, s, cross_turn=False)
    slots = [0, 1, 2]
    out1 = cached.act([first[k] for k in slots], slots)
    assert out1 == plain.act([first[k] for k in slots], slots)
    # turn 2: row 1 finished, rows come back in another order; row 2's history was edited
    # in the middle (e.g. an utterance the env sanitised differently)
    second = {0: first[0] + out1[0] + [c.eou_id] + rand(4), 2: first[2][:5] + rand(9)}
    slots2 = [2, 0]
    out2 = cached.act([second[k] for k in slots2], slots2)
    assert out2 == plain.act([second[k] for k in slots2], slots2)
    # and a brand-new slot joins
    third = {0: second[0] + out2[1] + rand(2), 7: rand(6)}
    out3 = cached.act([third[0], third[7]], [0, 7])
    assert out3 == plain.act([third[0], third[7]], [0, 7])
    assert cached.stats.encoded_tokens < plain.stats.encoded_tokens


def test_repeat_samples_each_prompt_n_times_from_one_prefill():
    tok, c, model, _ = _setup(GUESS, seed=4)
    s = SamplingConfig(greedy=True, max_utterance_tokens=6)
    prompts = [[1, 5, 6, 7], [1, 9]]
    ids, attn, _ = left_pad(prompts, 0, "cpu")
    once = generate_utterances(model, ids, attn, c.eou_id, s)
    rep = generate_utterances(model, ids, attn, c.eou_id, s, repeat=3)
    assert rep == [once[0]] * 3 + [once[1]] * 3


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix(list(range(200)), list(range(150)) + [0]) == 150
    assert common_prefix([], [1]) == 0


@pytest.mark.parametrize("capacity", [0, 9, 64])
def test_buffered_cache_logits_equal_a_full_forward(capacity):
    """Prefill then token-by-token steps through a BufferedCache (attention reads its whole
    buffer, unfilled columns masked; capacity 0 and 9 make it grow mid-way) give the logits
    of one uncached forward over the left-padded sequence."""
    from dialogue_rl.models.lm import cache_kwargs
    from dialogue_rl.rollout import BufferedLayer, new_cache

    tok, _, model, _ = _setup(GUESS, seed=2)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(5, len(tok), (n,), generator=gen).tolist() for n in (7, 12, 4)]
    ids, attn, pos = left_pad(seqs, tok.pad_token_id, "cpu")
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits
        prefix = 5  # widest row's first 5 columns, then one column at a time
        cache = new_cache(capacity)
        out = model(input_ids=ids[:, :prefix], attention_mask=attn[:, :prefix], position_ids=pos[:, :prefix],
                    use_cache=True, **cache_kwargs(model, cache))
        steps = [out.logits]
        for t in range(prefix, ids.shape[1]):
            out = model(input_ids=ids[:, t:t + 1], attention_mask=attn[:, :t + 1], position_ids=pos[:, t:t + 1],
                        use_cache=True, **cache_kwargs(model, cache))
            steps.append(out.logits)
    got = torch.cat(steps, dim=1)
    real = attn.bool()
    assert torch.allclose(got[real], full[real], atol=1e-5)
    layer = cache.layers[0]
    assert isinstance(layer, BufferedLayer) and layer.get_seq_length() == ids.shape[1]
    assert layer.keys.shape[-2] == ids.shape[1] and layer._kbuf.shape[-2] >= max(capacity, ids.shape[1])


@pytest.mark.parametrize("layout", ["buffer_view", "contiguous", "transposed"])
def test_compact_columns_matches_a_python_gather(layout):
    """compact_columns copies row src[b]'s columns cols[b] (any order, repeats allowed) into a
    contiguous buffer of the requested width, from the filled view of a wider buffer (the
    BufferedLayer case), a plain tensor, or a layout that takes the fallback path; the
    columns past the copied ones are finite."""
    from dialogue_rl.rollout import compact_columns

    gen = torch.Generator().manual_seed(0)
    r, h, w, d = 5, 3, 7, 4
    if layout == "buffer_view":
        x = torch.randn(r, h, w + 6, d, generator=gen)[:, :, :w]
    elif layout == "contiguous":
        x = torch.randn(r, h, w, d, generator=gen)
    else:
        x = torch.randn(r, h, d, w, generator=gen).transpose(2, 3)
    src = torch.tensor([4, 0, 0, 2])
    cols = torch.randint(0, w, (4, 5), generator=gen)
    out = compact_columns(x, src, cols, capacity=9)
    assert out.shape == (4, h, 9, d) and out.is_contiguous()
    for b in range(4):
        for c in range(5):
            assert torch.equal(out[b, :, c], x[src[b], :, cols[b, c]])
    assert torch.isfinite(out).all()


def test_buffer_pool_reuses_storage_per_key_and_parity():
    from dialogue_rl.rollout import BufferPool

    pool = BufferPool()
    a = pool.take((0, 0, "k"), (2, 3, 4), torch.float32, torch.device("cpu"))
    assert torch.count_nonzero(a) == 0  # fresh storage is zeros, never garbage
    a.fill_(1.0)
    b = pool.take((0, 0, "k"), (2, 2, 4), torch.float32, torch.device("cpu"))  # smaller: same storage
    assert b.data_ptr() == a.data_ptr() and b.is_contiguous()
    other = pool.take((1, 0, "k"), (2, 3, 4), torch.float32, torch.device("cpu"))  # other parity
    assert other.data_ptr() != a.data_ptr()
    big = pool.take((0, 0, "k"), (4, 3, 4), torch.float32, torch.device("cpu"))  # larger: grown
    assert big.numel() == 48 and torch.count_nonzero(big) == 0
    alloc = pool.allocator(1)(0)
    assert alloc("k", (2, 3, 4), torch.float32, torch.device("cpu")).data_ptr() == other.data_ptr()


def test_pooled_rollout_keeps_results_when_rows_drop_out():
    """Deal or No Deal episodes of different lengths (batch of 6): rows leave the batch as
    their episodes end, so the compaction reads a subset of the previous turn's rows; the
    pooled cross-turn cache still gives the re-encoding agent's transcripts, twice in a
    row on the same agent (the pool's buffers are reused across batches)."""
    env_id = "dialogue_rl/DealOrNoDeal-v0"
    tok, c, model, perturb = _setup(env_id, seed=4)
    kv, ref = _cached_and_plain(tok, c, model, perturb, 6)
    first, res = _transcripts(kv, env_id)
    again, _ = _transcripts(kv, env_id)
    want, _ = _transcripts(ref, env_id)
    assert first == want and again == want
    assert len({e["length"] for e in res.episodes}) > 1  # the episodes did end at different turns
    assert kv.rollout.pool.nbytes() > 0  # the buffers came from the pool


def test_caches_are_freed_by_reference_counting_not_left_to_the_garbage_collector():
    """Each turn's cache (and its KV buffers) must go when the turn is over: a cache in a
    reference cycle is freed only by a full collection, and a PPO run held hundreds of MiB of
    dead caches (its resident size climbed every iteration). With the collector off, nothing
    of a played batch survives the agent."""
    import gc
    import weakref

    from dialogue_rl.rollout import BufferedCache, BufferedLayer

    tok, c, model, perturb = _setup(MAZE)
    kv, _ = _cached_and_plain(tok, c, model, perturb, 6)
    gc.collect()
    gc.disable()
    try:
        _transcripts(kv, MAZE, kwargs={"max_steps": 5})
        pool = weakref.ref(kv.rollout.pool)
        del kv
        left = [o for o in gc.get_objects() if isinstance(o, (BufferedCache, BufferedLayer))]
        assert pool() is None and not left, f"{len(left)} caches/layers alive after their agent"
    finally:
        gc.enable()
