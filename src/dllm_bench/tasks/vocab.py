"""The fixed vocabulary of the built-in tasks, and the tokenizer that encodes it.

Every token is one whitespace-separated word: ``copy c a f =`` is five tokens. The
ids are fixed here, so prompts of the built-in tasks are made without a tokenizer, and
the shipped tokenizer (``write_tokenizer``) is built from the same table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = [
    "CAPITAL_WORDS",
    "ITEM_WORDS",
    "SPECIAL_TOKENS",
    "TASK_VOCAB",
    "TaskVocab",
    "load_task_tokenizer",
    "write_tokenizer",
]

#: Special tokens, in id order from 0.
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<mask>", "<unk>")
#: Words with a role in the prompts (separator and task names), after the special tokens.
MARKER_WORDS: tuple[str, ...] = ("=", "copy", "permute")
#: The items that lists are made of (16 lowercase letters), after the markers.
ITEM_WORDS: tuple[str, ...] = tuple("abcdefghijklmnop")
#: Their capitals, in the same order, after the items (``permute`` answers in capitals).
CAPITAL_WORDS: tuple[str, ...] = tuple(word.upper() for word in ITEM_WORDS)


@dataclass(frozen=True)
class TaskVocab:
    """Token ids of the built-in tasks' vocabulary."""

    words: tuple[str, ...]

    def id_of(self, word: str) -> int:
        """The id of ``word``; a ``KeyError`` names the word if it is not in the vocabulary."""
        try:
            return self.words.index(word)
        except ValueError:
            raise KeyError(f"{word!r} is not in the task vocabulary") from None

    @property
    def size(self) -> int:
        return len(self.words)

    @property
    def pad_id(self) -> int:
        return self.id_of("<pad>")

    @property
    def bos_id(self) -> int:
        return self.id_of("<bos>")

    @property
    def eos_id(self) -> int:
        return self.id_of("<eos>")

    @property
    def mask_id(self) -> int:
        return self.id_of("<mask>")

    @property
    def unk_id(self) -> int:
        return self.id_of("<unk>")

    @property
    def sep_id(self) -> int:
        return self.id_of("=")

    @property
    def item_ids(self) -> tuple[int, ...]:
        return tuple(self.id_of(word) for word in ITEM_WORDS)

    @property
    def capital_ids(self) -> tuple[int, ...]:
        return tuple(self.id_of(word) for word in CAPITAL_WORDS)

    def capital_of(self, item_id: int) -> int:
        """The id of the capital of item ``item_id``; a ``KeyError`` if it is not an item."""
        if item_id not in self.item_ids:
            raise KeyError(f"token id {item_id} is not an item")
        return self.id_of(self.words[item_id].upper())

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids that never appear inside a list (special tokens and markers)."""
        return tuple(self.id_of(word) for word in (*SPECIAL_TOKENS, *MARKER_WORDS))


TASK_VOCAB = TaskVocab(words=(*SPECIAL_TOKENS, *MARKER_WORDS, *ITEM_WORDS, *CAPITAL_WORDS))


def _build_backend(vocab: TaskVocab) -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(vocab.words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab.bos_id)]
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    return tokenizer


def task_tokenizer(vocab: TaskVocab = TASK_VOCAB) -> PreTrainedTokenizerFast:
    """A transformers tokenizer of the task vocabulary (no chat template)."""
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=_build_backend(vocab),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        padding_side="left",
        model_max_length=512,
    )


def write_tokenizer(folder: Path, vocab: TaskVocab = TASK_VOCAB) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` into
    ``folder``, loadable offline with ``AutoTokenizer.from_pretrained(folder)``."""
    folder.mkdir(parents=True, exist_ok=True)
    task_tokenizer(vocab).save_pretrained(str(folder))


def load_task_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer written by :func:`write_tokenizer` (through ``AutoTokenizer``)."""
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(str(folder))
    return tokenizer
