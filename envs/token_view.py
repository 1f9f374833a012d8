"""Per-token timestep view of a dialogue environment, and a tiny word-level tokenizer.

:class:`TokenLevelEnv` turns any :class:`~envs.core.DialogueEnv` into an env whose
action is one token id. Agent tokens accumulate until the end-of-utterance (EOU)
token; the utterance is then decoded and sent to the inner env, and the partner's
reply tokens are appended to the observation. Reward is 0 on every token except the
EOU token, which carries the utterance's reward. A turn that reaches the token
budget is cut: the EOU token is appended for the agent and the utterance is sent.

Token layout of a dialogue (shared with ``dialogue_rl.data`` through
:func:`encode_turn`, so training data and the env always agree)::

    [bos]? <speaker> : w1 w2 ... <eou>   <speaker> : w1 ... <eou>   ...

The speaker prefix (``agent :`` / ``env :``) is context the view writes; the agent's
actions are the utterance tokens and the closing EOU.

The tokenizer is any object with ``encode(str) -> list[int]``, ``decode(list[int]) ->
str`` and an EOU id (attribute ``eou_token_id`` or argument ``eou_id``); a Hugging Face
tokenizer works too. No torch is needed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.core import AGENT, CHARSET, SPEAKERS, DialogueEnv, Turn

PAD, BOS, EOU, UNK = "<pad>", "<bos>", "<eou>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOU, UNK)

#: Pre-tokenisation: runs of letters, single digits, single other non-space characters.
TOKEN_PATTERN = r"[a-z]+|[0-9]|[^\sa-z0-9]"
_TOKEN_RE = re.compile(TOKEN_PATTERN)
_NO_SPACE_BEFORE = set(".,?!:;%)'")
_NO_SPACE_AFTER = set("$('")


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def pre_tokenize(text: str) -> list[str]:
    """Split text into word-level pieces (lower-cased)."""
    return _TOKEN_RE.findall(text.lower())


def join_pieces(pieces: Iterable[str]) -> str:
    """Inverse of :func:`pre_tokenize` on canonical text (``"is it red?"``, ``"$450"``)."""
    out: list[str] = []
    prev = ""
    for p in pieces:
        if out and not (
            p in _NO_SPACE_BEFORE or prev in _NO_SPACE_AFTER or (p.isdigit() and prev.isdigit())
        ):
            out.append(" ")
        out.append(p)
        prev = p
    return "".join(out)


class WordTokenizer:
    """Exact word-level tokenizer: one id per word, digit and punctuation mark.

    ``vocab`` starts with the special tokens ``<pad> <bos> <eou> <unk>``; unknown
    pieces map to ``<unk>``. Build it with :meth:`from_words` (e.g. from
    ``env.vocabulary()``) or from any list of texts with :meth:`from_texts`.
    """

    def __init__(self, vocab: Sequence[str]) -> None:
        if tuple(vocab[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"vocab must start with {SPECIAL_TOKENS}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab has duplicate entries")
        self.vocab: list[str] = list(vocab)
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(self.vocab)}
        self.pad_token_id = self.token_to_id[PAD]
        self.bos_token_id = self.token_to_id[BOS]
        self.eou_token_id = self.token_to_id[EOU]
        self.unk_token_id = self.token_to_id[UNK]

    @classmethod
    def from_words(cls, words: Iterable[str]) -> WordTokenizer:
        """Vocabulary: specials, speaker tags, every charset character, then ``words``."""
        base = list(SPECIAL_TOKENS) + list(SPEAKERS)
        base += [c for c in CHARSET if not c.isspace()]
        pieces: list[str] = []
        for w in words:
            pieces.extend(pre_tokenize(w))
        seen = set(base)
        vocab = list(base)
        for p in sorted(set(pieces)):
            if p not in seen:
                seen.add(p)
                vocab.append(p)
        return cls(vocab)

    @classmethod
    def from_texts(cls, texts: Iterable[str], min_count: int = 1) -> WordTokenizer:
        """Vocabulary from a corpus: every piece seen at least ``min_count`` times."""
        counts: dict[str, int] = {}
        for t in texts:
            for p in pre_tokenize(t):
                counts[p] = counts.get(p, 0) + 1
        return cls.from_words(p for p, c in counts.items() if c >= min_count)

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        unk = self.unk_token_id
        return [self.token_to_id.get(p, unk) for p in pre_tokenize(text)]

    def decode(self, ids: Sequence[int]) -> str:
        specials = {self.pad_token_id, self.bos_token_id, self.eou_token_id}
        pieces = [self.vocab[i] for i in ids if 0 <= int(i) < len(self.vocab) and int(i) not in specials]
        return join_pieces(pieces)


class TokenCodec:
    """Adapter giving any tokenizer the three calls the token view needs.

    Hugging Face tokenizers are called with ``add_special_tokens=False`` and decoded
    with ``skip_special_tokens=True``; the EOU id comes from ``eou_id``, else the
    tokenizer's ``eou_token_id``, else its ``eos_token_id``.
    """

    def __init__(self, tokenizer: Any, eou_id: int | None = None) -> None:
        self.tokenizer = tokenizer
        self._hf = hasattr(tokenizer, "convert_tokens_to_ids")
        backend = getattr(tokenizer, "backend_tokenizer", None)
        # Word-level HF tokenizers decode with the lab's joining rule, like WordTokenizer.
        self._word_level = backend is not None and type(backend.model).__name__ == "WordLevel"
        if eou_id is None:
            eou_id = getattr(tokenizer, "eou_token_id", None)
        if eou_id is None:
            eou_id = getattr(tokenizer, "eos_token_id", None)
        if eou_id is None:
            raise ValueError("tokenizer has no end-of-utterance id: pass eou_id=")
        self.eou_id = int(eou_id)
        self.bos_id: int | None = getattr(tokenizer, "bos_token_id", None)
        self.vocab_size = int(len(tokenizer))
        self._prefix: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        if self._hf:
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        return list(self.tokenizer.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if self._word_level:
            return join_pieces(self.tokenizer.convert_ids_to_tokens(ids, skip_special_tokens=True))
        if self._hf:
            return str(self.tokenizer.decode(ids, skip_special_tokens=True))
        return str(self.tokenizer.decode(ids))

    def speaker_prefix(self, speaker: str) -> list[int]:
        if speaker not in self._prefix:
            self._prefix[speaker] = self.encode(f"{speaker}:")
        return self._prefix[speaker]


def as_codec(tokenizer: Any, eou_id: int | None = None) -> TokenCodec:
    return tokenizer if isinstance(tokenizer, TokenCodec) else TokenCodec(tokenizer, eou_id)


def encode_turn(codec: TokenCodec, speaker: str, text: str) -> tuple[list[int], list[int]]:
    """Token ids of one turn and the ids the speaker "acts" (text tokens + EOU).

    Returns ``(prefix, body)``: ``prefix`` is the speaker tag (context), ``body`` the
    utterance tokens followed by the EOU id.
    """
    return list(codec.speaker_prefix(speaker)), codec.encode(text) + [codec.eou_id]


def encode_dialogue(
    codec: TokenCodec, turns: Sequence[Turn | dict], add_bos: bool = True
) -> tuple[list[int], list[bool], list[float]]:
    """Token ids of a whole dialogue, the agent-action mask and per-token rewards.

    The mask is true on the agent's utterance tokens and its closing EOU (the tokens
    an agent emits); the reward of an agent utterance sits on its EOU token.
    """
    ids: list[int] = []
    mask: list[bool] = []
    rewards: list[float] = []
    if add_bos and codec.bos_id is not None:
        ids.append(int(codec.bos_id))
        mask.append(False)
        rewards.append(0.0)
    for t in turns:
        t = t if isinstance(t, Turn) else Turn.from_dict(t)
        prefix, body = encode_turn(codec, t.speaker, t.text)
        is_agent = t.speaker == AGENT
        ids += prefix + body
        mask += [False] * len(prefix) + [is_agent] * len(body)
        rewards += [0.0] * (len(prefix) + len(body) - 1) + [float(t.reward) if is_agent else 0.0]
    return ids, mask, rewards


class TokenLevelEnv(gym.Env[np.ndarray, int]):
    """One step per token over a :class:`DialogueEnv`.

    Observation: ``Sequence(Discrete(V), stack=True)``, the token ids of the dialogue
    so far (ending with the agent's speaker prefix and its partial utterance).
    Action: ``Discrete(V)``, one token id. Reward: 0 except on the token that ends
    an utterance (EOU or the budget's last token), which carries the inner reward.
    Episode end: as the inner env.

    Args:
        env: the per-utterance environment.
        tokenizer: see the module docstring.
        max_utterance_tokens: token budget of one agent utterance (EOU excluded).
        eou_id: end-of-utterance id when the tokenizer does not expose one.
        add_bos: start each observation with the tokenizer's BOS id, if it has one.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        env: DialogueEnv,
        tokenizer: Any,
        max_utterance_tokens: int = 32,
        eou_id: int | None = None,
        add_bos: bool = True,
    ) -> None:
        if max_utterance_tokens < 1:
            raise ValueError(f"max_utterance_tokens={max_utterance_tokens}: must be >= 1")
        self.env = env
        self.codec = as_codec(tokenizer, eou_id)
        self.max_utterance_tokens = int(max_utterance_tokens)
        self.add_bos = add_bos
        v = self.codec.vocab_size
        self.action_space = spaces.Discrete(v)
        self.observation_space = spaces.Sequence(spaces.Discrete(v), stack=True)
        self.render_mode = env.render_mode
        self._ids: list[int] = []
        self._current: list[int] = []
        self._n_seen = 0

    @property
    def unwrapped_dialogue(self) -> DialogueEnv:
        return self.env

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        _, info = self.env.reset(seed=seed, options=options)
        turns = info["turns"]
        self._ids, _, _ = encode_dialogue(self.codec, turns, add_bos=self.add_bos)
        self._n_seen = len(turns)
        self._start_agent_turn()
        return self._obs(), info

    def step(self, action: int):
        tok = int(action)
        self._current.append(tok)
        self._ids.append(tok)
        ends = tok == self.codec.eou_id or len(self._current) >= self.max_utterance_tokens
        if not ends:
            return self._obs(), 0.0, False, False, {"turns": self.env.turns}
        if tok != self.codec.eou_id:  # budget hit: cut the turn and close it
            self._ids.append(self.codec.eou_id)
        text = self.codec.decode([t for t in self._current if t != self.codec.eou_id])
        _, reward, terminated, truncated, info = self.env.step(text)
        for t in info["turns"][self._n_seen + 1 :]:  # the partner's reply (agent turn is ours)
            prefix, body = encode_turn(self.codec, t.speaker, t.text)
            self._ids += prefix + body
        self._n_seen = len(info["turns"])
        if not (terminated or truncated):
            self._start_agent_turn()
        return self._obs(), float(reward), terminated, truncated, info

    def render(self):
        return self.env.render()

    def close(self):
        self.env.close()

    def _start_agent_turn(self) -> None:
        self._current = []
        self._ids += self.codec.speaker_prefix(AGENT)

    def _obs(self) -> np.ndarray:
        return np.asarray(self._ids, dtype=np.int64)
