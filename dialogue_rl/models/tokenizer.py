"""Word-level Hugging Face fast tokenizers built from an env vocabulary (or a corpus).

The tokenizer is a :class:`transformers.PreTrainedTokenizerFast` over a ``WordLevel``
model whose pre-tokenisation is exactly :data:`envs.token_view.TOKEN_PATTERN`
(runs of letters, single digits, single punctuation marks), so its ids equal those of
the pure-python :class:`envs.token_view.WordTokenizer` with the same vocabulary. It is
saved with ``save_pretrained`` and loads with ``AutoTokenizer.from_pretrained``.
Special tokens: ``<pad>``, ``<bos>``, ``<eou>`` (end of utterance, exposed as
``eos_token``), ``<unk>``; speaker tags (``agent``, ``env``) are ordinary words.

Any other Hugging Face tokenizer (e.g. GPT-2's BPE) is accepted by
:func:`prepare_tokenizer`, which adds ``<eou>`` and a pad token when missing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from envs.token_view import BOS, EOU, PAD, TOKEN_PATTERN, UNK, WordTokenizer, as_codec

log = logging.getLogger(__name__)


def build_word_tokenizer(words: Iterable[str] = (), texts: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer over ``words`` plus every piece of ``texts``."""
    pieces = list(words)
    pieces += WordTokenizer.from_texts(texts).vocab
    word_tok = WordTokenizer.from_words(p for p in pieces if p not in (PAD, BOS, EOU, UNK))
    vocab = {t: i for i, t in enumerate(word_tok.vocab)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(TOKEN_PATTERN), behavior="isolated")]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, bos_token=BOS, eos_token=EOU, unk_token=UNK
    )
    return tok


def prepare_tokenizer(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Make any HF tokenizer usable by the lab: an ``<eou>`` token and a pad token."""
    added = {}
    if EOU not in tok.get_vocab():
        added["additional_special_tokens"] = [EOU]
    if tok.pad_token is None:
        added["pad_token"] = PAD
    if added:
        tok.add_special_tokens(added)
    return tok


def eou_id(tok: PreTrainedTokenizerBase) -> int:
    """The end-of-utterance id of a lab tokenizer."""
    return int(tok.convert_tokens_to_ids(EOU))


def codec(tok: PreTrainedTokenizerBase):
    """The :class:`envs.token_view.TokenCodec` of a lab tokenizer."""
    return as_codec(tok, eou_id(tok))


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a saved or hub tokenizer (offline when ``HF_HUB_OFFLINE=1``)."""
    return prepare_tokenizer(AutoTokenizer.from_pretrained(str(path)))
