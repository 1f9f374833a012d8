"""Logged datasets: schema errors, save/load, generation, policy specs, token and utterance views."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dialogue_rl.data import (
    EVAL_SEED_OFFSET,
    DataConfig,
    DatasetError,
    SequenceTooLongError,
    collate_tokens,
    dataset_dir,
    dataset_key,
    ensure_dataset,
    flatten_transitions,
    generate,
    load_dataset,
    load_metadata,
    parse_spec,
    resolve_policy,
    save_dataset,
    split_policies,
    split_seeds,
    tokenize_dataset,
    tokenize_dialogue,
    utterance_transitions,
    validate_rows,
)
from envs.core import play_episode, policy_rng
from envs.token_view import WordTokenizer
from tests.toy_envs import GuessNumberEnv

REPO = Path(__file__).resolve().parents[1]
generate_mod = importlib.import_module("dialogue_rl.data.generate")  # the package exports a function `generate`
TOY_ID = "dialogue_rl_test/GuessNumber-v0"
if TOY_ID not in gym.registry:
    gym.register(TOY_ID, entry_point="tests.toy_envs:GuessNumberEnv")


def toy_cfg(**kw) -> DataConfig:
    base = dict(
        env_id=TOY_ID,
        mixture={"expert": 0.4, "random": 0.3, "expert>random@1": 0.2, "expert~random@0.3": 0.1},
        n_train=40,
        n_validation=10,
        seed=0,
    )
    base.update(kw)
    return DataConfig(**base)


def row(turns, *, success=True, policy="expert", seed=7, length=None, ret=None) -> dict:
    turns = [{"speaker": s, "text": t, "reward": r} for s, t, r in turns]
    return {
        "env_id": TOY_ID,
        "seed": seed,
        "policy": policy,
        "turns": turns,
        "return": sum(t["reward"] for t in turns) if ret is None else ret,
        "length": sum(t["speaker"] == "agent" for t in turns) if length is None else length,
        "success": success,
    }


GOOD = [("env", "guess my number.", 0.0), ("agent", "is it 2?", -1.0), ("env", "higher.", 0.0),
        ("agent", "is it 3?", 0.25), ("env", "yes!", 0.0)]


def one_line_error(excinfo, *needles: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


# ------------------------------------------------------------------ save / load
@pytest.fixture(scope="module")
def toy_rows():
    return generate(toy_cfg())


def test_round_trip(tmp_path, toy_rows):
    path = save_dataset(tmp_path / "ds", toy_rows, {"env_id": TOY_ID, "note": "x"})
    dd = load_dataset(path)
    assert set(dd) == {"train", "validation"}
    for split, rows in toy_rows.items():
        assert dd[split].to_list() == rows  # float32 rewards survive exactly
    meta = load_metadata(path)
    assert meta["note"] == "x" and meta["schema_version"] == 1
    info = meta["splits"]["train"]
    assert info["num_rows"] == 40 and len(info["sha256"]) == 64
    returns = np.array([r["return"] for r in toy_rows["train"]])
    assert info["returns"]["overall"]["mean"] == pytest.approx(returns.mean())
    assert set(info["returns"]["per_policy"]) == {r["policy"] for r in toy_rows["train"]}
    assert not list(path.glob(".*tmp"))  # no temp files left
    # a datasets.Dataset can be saved as well
    again = save_dataset(tmp_path / "ds2", {"train": dd["train"]}, {})
    assert load_dataset(again)["train"].to_list() == toy_rows["train"]


@pytest.mark.parametrize(
    "bad, needles",
    [
        (lambda r: r.pop("return"), ["row 1", "'return'", "missing"]),
        (lambda r: r.update(seed="7"), ["row 1", "'seed'"]),
        (lambda r: r.update(success=1), ["row 1", "'success'", "bool"]),
        (lambda r: r["turns"][1].update(speaker="bob"), ["row 1", "'turns[1].speaker'", "'bob'"]),
        (lambda r: r["turns"][1].update(reward=float("nan")), ["row 1", "'turns[1].reward'", "nan"]),
        (lambda r: r["turns"][2].update(reward=1.0), ["row 1", "'turns[2].reward'", "'env' turn"]),
        (lambda r: r.update({"return": 3.0}), ["row 1", "'return'", "sum to -0.75"]),
        (lambda r: r.update(length=5), ["row 1", "'length'", "2 agent turns"]),
        (lambda r: r.update(extra=1), ["row 1", "'extra'", "not a column"]),
        (lambda r: r.update(turns=[]), ["row 1", "'turns'", "empty"]),
    ],
)
def test_row_errors_name_source_row_field(bad, needles):
    rows = [row(GOOD), row(GOOD)]
    bad(rows[1])
    with pytest.raises(DatasetError) as e:
        validate_rows(rows, "train.parquet")
    one_line_error(e, "train.parquet", "scripts/generate_data.py", *needles)


def test_optional_terminated_column_all_rows_or_none():
    with pytest.raises(DatasetError) as e:
        validate_rows([{**row(GOOD), "terminated": True}, row(GOOD)], "x")
    one_line_error(e, "row 1", "'terminated'", "other rows")
    with pytest.raises(DatasetError) as e:
        validate_rows([row(GOOD), {**row(GOOD), "terminated": True}], "x")
    one_line_error(e, "row 1", "'terminated'", "not a column")
    with pytest.raises(DatasetError) as e:
        validate_rows([{**row(GOOD), "terminated": True}, {**row(GOOD), "terminated": 1}], "x")
    one_line_error(e, "row 1", "'terminated'", "bool")


def test_empty_split_is_an_error(tmp_path):
    with pytest.raises(DatasetError) as e:
        save_dataset(tmp_path, {"train": [row(GOOD)], "validation": []}, {})
    one_line_error(e, "validation", "empty")
    assert not (tmp_path / "metadata.json").exists()


def _rewrite(path: Path, split: str, table: pa.Table) -> Path:
    """Replace a split file and fix metadata.json so only the content is wrong."""
    file = path / f"{split}.parquet"
    pq.write_table(table, file)
    meta = json.loads((path / "metadata.json").read_text())
    from dialogue_rl.data import sha256_file

    meta["splits"][split]["sha256"] = sha256_file(file)
    (path / "metadata.json").write_text(json.dumps(meta))
    return file


@pytest.fixture
def saved(tmp_path) -> Path:
    return save_dataset(tmp_path / "ds", {"train": [row(GOOD), row(GOOD, seed=8)], "validation": [row(GOOD)]}, {})


def test_load_missing_column(saved):
    table = pq.read_table(saved / "train.parquet").drop_columns(["success"])
    file = _rewrite(saved, "train", table)
    with pytest.raises(DatasetError) as e:
        load_dataset(saved)
    one_line_error(e, str(file), "'success'", "missing")


def test_load_wrong_type(saved):
    table = pq.read_table(saved / "train.parquet")
    table = table.set_column(1, "seed", pa.array(["7", "8"]))
    file = _rewrite(saved, "train", table)
    with pytest.raises(DatasetError) as e:
        load_dataset(saved)
    one_line_error(e, str(file), "'seed'", "string", "int64")


def test_load_bad_row_names_file_and_row(saved):
    bad = row(GOOD, seed=8)
    bad["return"] = 5.0
    from dialogue_rl.data import FEATURES

    file = _rewrite(saved, "train", pa.Table.from_pylist([row(GOOD), bad], schema=FEATURES.arrow_schema))
    with pytest.raises(DatasetError) as e:
        load_dataset(saved)
    one_line_error(e, str(file), "row 1", "'return'")


def test_load_checksum_mismatch(saved):
    file = saved / "validation.parquet"
    with open(file, "ab") as f:
        f.write(b"x")
    with pytest.raises(DatasetError) as e:
        load_dataset(saved)
    one_line_error(e, str(file), "sha256", "regenerate")


def test_load_missing_metadata_and_dir(saved, tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path / "nope")
    one_line_error(e, "nope", "no such dataset directory")
    (saved / "metadata.json").unlink()
    with pytest.raises(DatasetError) as e:
        load_dataset(saved)
    one_line_error(e, "metadata.json", "missing")


def test_save_rejects_reserved_metadata(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_dataset(tmp_path, {"train": [row(GOOD)]}, {"splits": 1})


# ------------------------------------------------------------------ generation
def test_generation_is_deterministic_and_worker_independent():
    cfg = toy_cfg(n_train=600, n_validation=30)
    a = generate(cfg)
    assert generate(cfg) == a
    assert generate(toy_cfg(n_train=600, n_validation=30, num_workers=2)) == a
    assert generate(toy_cfg(n_train=600, n_validation=30, seed=1)) != a


def test_seeds_disjoint_and_below_eval_offset(toy_rows):
    cfg = toy_cfg(n_train=5000, n_validation=2000)
    train, val = split_seeds(cfg, "train"), split_seeds(cfg, "validation")
    assert len(set(train.tolist())) == 5000 and len(set(val.tolist())) == 2000
    assert not set(train.tolist()) & set(val.tolist())
    assert train.min() >= 0 and max(train.max(), val.max()) < EVAL_SEED_OFFSET
    assert set(split_seeds(toy_cfg(seed=3), "train").tolist()).isdisjoint(split_seeds(toy_cfg(), "train").tolist())
    assert [r["seed"] for r in toy_rows["train"]] == split_seeds(toy_cfg(), "train").tolist()


def test_mixture_proportions_exact_and_deterministic():
    cfg = toy_cfg(n_train=1000)
    pols = split_policies(cfg, "train")
    counts = {s: pols.count(s) for s in cfg.mixture}
    assert counts == {"expert": 400, "random": 300, "expert>random@1": 200, "expert~random@0.3": 100}
    assert pols == split_policies(cfg, "train") and pols[:50] != sorted(pols[:50])


def test_rows_match_play_episode(toy_rows):
    env = GuessNumberEnv()
    for r in toy_rows["train"][:10]:
        ep = play_episode(env, resolve_policy(env, r["policy"]), r["seed"])
        assert [t["text"] for t in r["turns"]] == [t.text for t in ep.turns]
        assert r["length"] == ep.agent_turns and r["success"] == ep.success
        assert r["env_id"] == TOY_ID


def test_terminated_column_records_how_episodes_ended(tmp_path):
    rows = generate(toy_cfg(env_kwargs={"max_turns": 2}, n_train=60))["train"]
    # in GuessNumber only the right guess ends the game; the turn limit truncates
    assert [r["terminated"] for r in rows] == [r["success"] for r in rows]
    assert {r["terminated"] for r in rows} == {True, False}
    loaded = load_dataset(save_dataset(tmp_path, {"train": rows}, {}))["train"]
    assert loaded["terminated"] == [r["terminated"] for r in rows]


def test_dataset_key_and_ensure_dataset(tmp_path, monkeypatch):
    cfg = toy_cfg(n_train=20, n_validation=5)
    reordered = toy_cfg(n_train=20, n_validation=5, num_workers=2,
                        mixture=dict(reversed(list(cfg.mixture.items()))))
    assert dataset_key(cfg) == dataset_key(reordered)
    assert dataset_key(cfg) != dataset_key(toy_cfg(n_train=21, n_validation=5))
    path = ensure_dataset(cfg, tmp_path)
    assert path == dataset_dir(cfg, tmp_path) and path.name == f"GuessNumber-v0-{dataset_key(cfg)}"
    assert load_metadata(path)["max_turns"] == 6
    rows = load_dataset(path)["train"].to_list()

    def boom(*a, **k):
        raise AssertionError("should reuse")

    monkeypatch.setattr(generate_mod, "generate_and_save", boom)
    assert ensure_dataset(cfg, tmp_path) == path
    monkeypatch.undo()
    with open(path / "train.parquet", "ab") as f:  # corrupt -> regenerated
        f.write(b"junk")
    assert ensure_dataset(cfg, tmp_path) == path
    assert load_dataset(path)["train"].to_list() == rows


def test_config_errors():
    with pytest.raises(ValueError, match="weights"):
        toy_cfg(mixture={"expert": -1.0})
    with pytest.raises(ValueError, match="n_validation"):
        toy_cfg(n_validation=0)
    with pytest.raises(ValueError, match="valid names: expert, random"):
        generate(toy_cfg(mixture={"expret": 1.0}))
    with pytest.raises(ValueError, match="unknown key 'n_test'"):
        DataConfig.from_dict({**toy_cfg().__dict__, "n_test": 3})


# ------------------------------------------------------------------ policy specs
def test_parse_spec():
    assert parse_spec("expert").op is None
    s = parse_spec(" expert > random @ 2 ", ["expert", "random"])
    assert (s.first, s.op, s.second, s.param) == ("expert", ">", "random", 2.0)
    assert parse_spec("expert~random@0.25").param == 0.25
    for bad in ["expert>random", "expert>random@1.5", "expert~random@2", "a>b>c@1", "", "expert random"]:
        with pytest.raises(ValueError, match="bad policy spec"):
            parse_spec(bad)
    with pytest.raises(ValueError, match="unknown policy 'oracle'.*valid names: expert, random"):
        parse_spec("expert>oracle@1", ["random", "expert"])


def test_stitching_spec_follows_first_policy_then_second():
    env = GuessNumberEnv(n=50, max_turns=8)
    first_turn = lambda ep: next(t.text for t in ep.turns if t.speaker == "agent")  # noqa: E731
    for seed in range(5):
        ep = play_episode(env, resolve_policy(env, "expert>random@1"), seed)
        assert first_turn(ep) == first_turn(play_episode(env, resolve_policy(env, "expert"), seed)) == "is it 25?"
        # the first policy gets the episode's own rng: a stochastic one acts identically
        mixed = play_episode(env, resolve_policy(env, "random>expert@2"), seed)
        pure = play_episode(env, resolve_policy(env, "random"), seed)
        agent = lambda e: [t.text for t in e.turns if t.speaker == "agent"]  # noqa: E731
        assert agent(mixed)[:2] == agent(pure)[:2]
    eps0 = play_episode(env, resolve_policy(env, "expert~random@0"), 3)
    assert eps0.turns == play_episode(env, resolve_policy(env, "expert"), 3).turns
    policy = resolve_policy(env, "expert~random@1")(env, policy_rng(0))
    assert policy.epsilon == 1.0


def test_recipes_in_conf_data_parse_and_resolve():
    recipes = sorted((REPO / "conf" / "data").glob("*.yaml"))
    if not recipes:
        pytest.skip("no recipes in conf/data yet")
    for path in recipes:
        cfg = DataConfig.from_yaml(path)
        try:
            env = generate_mod.make_env(cfg.env_id, cfg.env_kwargs)
        except ValueError:
            continue  # env of another helper not registered yet
        for spec in cfg.mixture:
            resolve_policy(env, spec)


def test_hydra_schema_rejects_unknown_keys(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    spec = importlib.util.spec_from_file_location("generate_data_script", REPO / "scripts" / "generate_data.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)  # registers the schema in the ConfigStore
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "toy.yaml").write_text(
        f"env_id: {TOY_ID}\nenv_kwargs: {{}}\nmixture:\n  expert: 1.0\n  'expert>random@1': 0.5\n"
        "n_train: 10\nn_validation: 2\nseed: 0\n"
    )
    (tmp_path / "data" / "with_schema.yaml").write_text(
        f"defaults:\n  - data_schema\nenv_id: {TOY_ID}\nmixture: {{expert: 1.0}}\nn_train: 3\nn_validation: 1\n"
    )
    (tmp_path / "data" / "typo.yaml").write_text(f"env_id: {TOY_ID}\nmixture: {{expert: 1.0}}\nn_trian: 10\n")
    search = f"hydra.searchpath=[file://{tmp_path}]"
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("generate_data", overrides=[search, "data=toy", "data.n_train=5"])
        data = DataConfig.from_dict(OmegaConf.to_container(cfg.data))
        assert data.n_train == 5 and data.mixture["expert>random@1"] == 0.5 and data.num_workers == 1
        assert compose("generate_data", overrides=[search, "data=with_schema"]).data.n_train == 3
        with pytest.raises(Exception, match="bogus"):
            compose("generate_data", overrides=[search, "data=toy", "data.bogus=1"])
        with pytest.raises(Exception, match="n_trian"):  # a typo inside a recipe file
            compose("generate_data", overrides=[search, "data=typo"])
        with pytest.raises(Exception, match="n_train"):
            compose("generate_data", overrides=[search, "data=toy", "data.n_train=abc"])


# ------------------------------------------------------------------ token view
@pytest.fixture(scope="module")
def tok() -> WordTokenizer:
    return WordTokenizer.from_words(GuessNumberEnv.vocabulary())


def ids_of(tok: WordTokenizer, pieces: str) -> list[int]:
    return [tok.token_to_id[p] for p in pieces.split()]


# bos | env : guess my number . eou | agent : is it 2 ? eou | env : higher . eou |
# agent : is it 3 ? eou | env : yes ! eou
#   0 |   1 2   3     4  5      6 7 |     8 9 10 11 12 13 14 | 15 16 17 18 19 |
#    20 21 22 23 24 25 26 | 27 28 29 30 31
PIECES = ("<bos> env : guess my number . <eou> agent : is it 2 ? <eou> env : higher . <eou> "
          "agent : is it 3 ? <eou> env : yes ! <eou>")
ACTIONS = [10, 11, 12, 13, 14, 22, 23, 24, 25, 26]


def test_token_view_terminated(tok):
    ex = tokenize_dialogue(row(GOOD), tok)
    assert ex["input_ids"].tolist() == ids_of(tok, PIECES) and ex["input_ids"].dtype == np.int64
    assert np.flatnonzero(ex["action_mask"]).tolist() == ACTIONS
    expected_r = np.zeros(32, np.float32)
    expected_r[14], expected_r[26] = -1.0, 0.25
    assert ex["rewards"].dtype == np.float32 and ex["rewards"].tolist() == expected_r.tolist()
    assert np.flatnonzero(ex["dones"]).tolist() == [26] and bool(ex["terminated"])
    ns = ex["next_state"]
    # inside an utterance: j; across the env reply: last token of the next "agent :" prefix
    assert [ns[j] for j in ACTIONS] == [10, 11, 12, 13, 21, 22, 23, 24, 25, 26]
    assert ex["return"] == np.float32(-0.75)
    # rows without the optional column count as terminated; the column or an override decides otherwise
    assert tokenize_dialogue({**row(GOOD), "terminated": True}, tok)["dones"][26]
    assert not tokenize_dialogue({**row(GOOD), "terminated": False}, tok)["dones"].any()
    assert not tokenize_dialogue(row(GOOD), tok, terminated=False)["dones"].any()


def test_token_view_truncated_bootstraps_from_appended_prefix(tok):
    turns = GOOD[:4] + [("env", "lower.", 0.0)]
    ex = tokenize_dialogue({**row(turns, success=False), "terminated": False}, tok)
    pieces = PIECES.replace("yes !", "lower .") + " agent :"
    assert ex["input_ids"].tolist() == ids_of(tok, pieces) and len(ex["input_ids"]) == 34
    assert not ex["dones"].any() and not bool(ex["terminated"])
    assert ex["next_state"][26] == 33  # the appended "agent :" prefix, not padding
    assert not ex["action_mask"][32:].any() and not ex["rewards"][32:].any()
    assert [ex["next_state"][j] for j in ACTIONS[:5]] == [10, 11, 12, 13, 21]
    # same dialogue below the turn limit: terminated (a failure that ended the game)
    assert tokenize_dialogue(row(turns, success=False), tok)["dones"][26]


def test_collate_pads_right(tok):
    a = tokenize_dialogue(row(GOOD), tok)  # 32 tokens
    b = tokenize_dialogue({**row(GOOD[:4] + [("env", "lower.", 0.0)], success=False), "terminated": False}, tok)
    batch = collate_tokens([a, b], pad_id=tok.pad_token_id)
    assert batch["input_ids"].shape == (2, 34) and batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][0, 32:].tolist() == [tok.pad_token_id] * 2
    assert batch["attention_mask"].sum(1).tolist() == [32, 34]
    assert not batch["action_mask"][0, 32:].any() and not batch["dones"][0, 32:].any()
    assert batch["rewards"].dtype == torch.float32 and batch["rewards"][0, 26] == 0.25
    assert batch["next_state"][0, 32:].tolist() == [31, 31] and batch["next_state"][1, 26] == 33
    assert batch["next_state"].max() < 34
    assert batch["returns"].tolist() == [-0.75, -0.75] and batch["terminated"].tolist() == [True, False]
    assert batch["lengths"].tolist() == [32, 34]


def test_tokenize_dataset_caches_and_handles_too_long(tok, toy_rows):
    td = tokenize_dataset(toy_rows["train"], tok)
    assert len(td) == 40
    for i in (0, 17, 39):
        ref = tokenize_dialogue(toy_rows["train"][i], tok)
        for k in ("input_ids", "action_mask", "rewards", "dones", "next_state"):
            assert np.array_equal(td[i][k], ref[k])
    with pytest.raises(ValueError):
        td[0]["input_ids"][0] = 5  # cached arrays are read-only
    limit = int(np.median(td.lengths))
    with pytest.raises(SequenceTooLongError, match="max_length"):
        tokenize_dataset(toy_rows["train"], tok, max_length=limit)
    kept = tokenize_dataset(toy_rows["train"], tok, max_length=limit, on_too_long="drop")
    assert 0 < len(kept) < 40 and kept.max_length <= limit
    assert kept.rows.tolist() == [i for i, n in enumerate(td.lengths) if n <= limit]


# ------------------------------------------------------------------ utterance view
def test_utterance_transitions():
    trs = utterance_transitions(row(GOOD))
    assert trs == [
        {"state": "env: guess my number.", "action": "is it 2?", "reward": -1.0,
         "next_state": "env: guess my number.\nagent: is it 2?\nenv: higher.", "done": False, "turn_index": 0},
        {"state": "env: guess my number.\nagent: is it 2?\nenv: higher.", "action": "is it 3?", "reward": 0.25,
         "next_state": "env: guess my number.\nagent: is it 2?\nenv: higher.\nagent: is it 3?\nenv: yes!",
         "done": True, "turn_index": 1},
    ]
    truncated = utterance_transitions({**row(GOOD, success=False), "terminated": False})
    assert [t["done"] for t in truncated] == [False, False]
    flat = flatten_transitions([row(GOOD), row(GOOD[:3])])
    assert [(t["row"], t["turn_index"]) for t in flat] == [(0, 0), (0, 1), (1, 0)]
