"""Logged-dialogue datasets: schema, generation, storage and learner views.

* :mod:`~dialogue_rl.data.schema` - the row schema (DESIGN.md section 4) and validation;
* :mod:`~dialogue_rl.data.io` - parquet splits + ``metadata.json``, checksummed;
* :mod:`~dialogue_rl.data.specs` - behaviour-policy specs (``expert``, ``A>B@k``, ``A~B@p``);
* :mod:`~dialogue_rl.data.generate` - recipes (:class:`DataConfig`), generation, caching;
* :mod:`~dialogue_rl.data.views` - per-token and per-utterance views and the collator.

Typical use by a learner::

    path = ensure_dataset(DataConfig(**cfg.data), root="data")
    dd = load_dataset(path)
    train = tokenize_dataset(dd["train"], tokenizer, max_length=512)   # rows carry `terminated`
    loader = DataLoader(train, batch_size=32, shuffle=True,
                        collate_fn=functools.partial(collate_tokens, pad_id=tokenizer.pad_token_id))
"""

from dialogue_rl.data.generate import (
    EVAL_SEED_OFFSET,
    GENERATOR_VERSION,
    SPLITS,
    DataConfig,
    config_dict,
    dataset_dir,
    dataset_key,
    dataset_metadata,
    ensure_dataset,
    generate,
    generate_and_save,
    make_env,
    play_logged_episode,
    split_policies,
    split_seeds,
)
from dialogue_rl.data.io import (
    METADATA_FILE,
    load_dataset,
    load_metadata,
    save_dataset,
    sha256_file,
    verify_files,
)
from dialogue_rl.data.schema import (
    COLUMNS,
    FEATURES,
    OPTIONAL_COLUMNS,
    OPTIONAL_FEATURES,
    SCHEMA_VERSION,
    DatasetError,
    validate_dataset,
    validate_row,
    validate_rows,
)
from dialogue_rl.data.specs import PolicySpec, parse_spec, resolve_policy
from dialogue_rl.data.views import (
    SequenceTooLongError,
    TokenizedDataset,
    collate_tokens,
    episode_terminated,
    flatten_transitions,
    iter_rows,
    tokenize_dataset,
    tokenize_dialogue,
    utterance_transitions,
)

__all__ = [
    "COLUMNS", "DataConfig", "DatasetError", "EVAL_SEED_OFFSET", "FEATURES", "GENERATOR_VERSION",
    "METADATA_FILE", "OPTIONAL_COLUMNS", "OPTIONAL_FEATURES", "PolicySpec", "SCHEMA_VERSION", "SPLITS",
    "SequenceTooLongError", "TokenizedDataset", "collate_tokens", "config_dict", "dataset_dir",
    "dataset_key", "dataset_metadata", "ensure_dataset", "episode_terminated", "flatten_transitions",
    "generate", "generate_and_save", "iter_rows", "load_dataset", "load_metadata", "make_env",
    "parse_spec", "play_logged_episode", "resolve_policy", "save_dataset", "sha256_file",
    "split_policies", "split_seeds", "tokenize_dataset", "tokenize_dialogue", "utterance_transitions",
    "validate_dataset", "validate_row", "validate_rows", "verify_files",
]
