"""The benchmark's functions run at a minuscule size and give the documented keys and types."""

import json

import torch

from dialogue_rl.bench import BenchConfig, env_speed, render_markdown, run_bench
from dialogue_rl.models import ModelConfig

REQUIRED = ("matmul_peak_gflops", "mfu_bc", "mfu_ilql", "ilql_over_bc_update", "uq_over_bc_update",
            "rollout_speedup_kv_vs_reencode", "rollout_speedup_kv_vs_generate", "peak_rss_mb_train")


def test_bench_keys_and_types_at_a_tiny_size(tmp_path):
    cfg = BenchConfig(
        model=ModelConfig("t", n_layer=1, n_head=2, n_embd=16, n_positions=256), batch_size=2, repeats=1,
        matmul_n=64, rollout_episodes=2, rollout_repeats=1, max_utterance_tokens=3, env_budget_s=0.0,
        env_repeats=1, env_ids=("dialogue_rl/GuessWhich-v0", "dialogue_rl/MazeFO-v0"), rss=False,
    )
    res = run_bench(cfg)
    json.loads(json.dumps(res))  # JSON-ready
    for k in REQUIRED[:-1]:
        assert isinstance(res[k], float) and res[k] > 0, k
    assert set(res["env_steps_per_s"]) == {"dialogue_rl/GuessWhich-v0", "dialogue_rl/MazeFO-v0"}
    assert all(v > 0 for v in res["env_steps_per_s"].values())
    assert all(v > 0 for v in res["env_token_steps_per_s"].values())
    for s in (res["update_s"]["bc"], res["matmul_peak_gflops_stats"], res["rollout_s"]["kv"]):
        assert set(s) == {"min", "median", "max"} and s["min"] <= s["median"] <= s["max"]
    assert res["rollout_kv_equals_reencode"] is True  # greedy: same transcripts
    # the long-dialogue figure plays GuessWhich with 10 questions, same transcripts too
    assert res["rollout_long_mean_agent_turns"] == 10.0 and res["rollout_long_kv_equals_reencode"] is True
    assert res["rollout_long_speedup_kv_vs_reencode"] > 0
    # multi-turn episodes re-encode history, so the bound is above 1
    assert res["rollout_long_speedup_kv_vs_reencode_token_bound"] > 1 and res["rollout_speedup_kv_vs_reencode_token_bound"] > 1
    assert 0 <= res["padding_fraction_grouped"] <= res["padding_fraction"] < 1  # grouping pads less
    assert res["mfu_bc_grouped"] > 0
    assert res["uq_sampling"]["candidates_per_s"] > 0 and 0 < res["uq_sampling_fraction_cold_step"] < 1
    md = render_markdown(res, "python scripts/bench.py --quick")
    assert md.startswith("# Performance") and "| BC training MFU" in md


def test_env_speed_counts_steps_of_both_views():
    u = env_speed("dialogue_rl/MazeFO-v0", 0.0)
    t = env_speed("dialogue_rl/MazeFO-v0", 0.0, token_view=True)
    assert u["episodes"] == 1 and u["steps"] >= 1 and u["steps_per_s"] >= u["loop_steps_per_s"] > 0
    assert t["steps"] >= u["steps"]  # a token view episode takes at least one token per utterance


def test_peak_rss_child_reports_memory():
    from dialogue_rl.bench import peak_rss

    res = peak_rss("eval", ModelConfig("t", n_layer=1, n_head=2, n_embd=16, n_positions=256),
                   torch.device("cpu"), n=2)
    assert res["peak_rss_mb"] >= res["import_rss_mb"] > 10


def test_reencode_token_bound_counts_tokens_by_hand():
    from dialogue_rl.bench import reencode_token_bound
    from envs.token_view import TokenCodec, WordTokenizer

    codec = TokenCodec(WordTokenizer.from_texts(["agent: env: a b c x y"]))
    # speaker tags are 2 tokens ("env", ":"); a body is its words + <eou>
    ep = {"turns": [{"speaker": "env", "text": "a b c"}, {"speaker": "agent", "text": "x y"},
                    {"speaker": "env", "text": "a"}, {"speaker": "agent", "text": "x"}]}
    got = reencode_token_bound([ep], codec)
    # re-encoding prefills (env turn 6) + tag 2 = 8, then (6 + 5 + 4) + 2 = 17; decodes 3 + 2
    # the cache reads the 19 tokens of the dialogue once, 5 of them decoded, 14 appended
    assert got == {"prefill_tokens": 25.0, "generated_tokens": 5.0, "appended_tokens": 14.0, "bound": 30 / 19}
    # with no history to re-encode beyond what the cache also reads, the bound is 1
    one = reencode_token_bound([{"turns": [{"speaker": "agent", "text": "x"}]}], codec)
    assert one["bound"] == 1.0
