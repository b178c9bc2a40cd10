"""Tiny offline assets for tests and CPU presets: a random tiny LLaMA and its tokenizer, a tiny BERT tokenizer.

Nothing here downloads anything. The tokenizer is a byte-level BPE trained
with ``tokenizers`` on a small built-in corpus (the prompt templates, the
FERID instructions, every expression name and alias, age-gender-race
sentences); tokens are capped at 6 characters so several expression names
span more than one token. The model is a 2-layer LLaMA of width 64 with
seeded random weights. Both are written once with ``save_pretrained`` to a
cache directory and loaded back through the real ``from_pretrained`` path,
so tests exercise the same code as real checkpoints. The tiny BERT tokenizer
(for LLaMA-VID's Q-Former) is a lower-casing WordPiece trained on the same
corpus and saved as a ``bert-base-uncased``-style folder.

The cache lives in ``$EMOFER_CACHE`` (default ``~/.cache/emofer``) under a
name that hashes everything the assets are built from.

Example:
    >>> from transformers import AutoModelForCausalLM, AutoTokenizer
    >>> path = tiny_llm_dir()
    >>> AutoModelForCausalLM.from_pretrained(path).config.hidden_size
    64
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from emofer.data.instructions import category_question
from emofer.labels import CANONICAL, FERID7
from emofer.llm.agr import AGE_LABELS, agr_sentences
from emofer.llm.loading import NAMED_LLMS
from emofer.llm.parsing import ALIASES
from emofer.llm.prompts import IMAGE_MARKER, PROMPT_TEMPLATES, get_template
from emofer.paths import default_cache_dir

ASSET_VERSION = 1
"""Bumped whenever the recipe below changes, so stale caches are not reused."""

SPECIAL_TOKENS = (
    "<unk>",
    "<s>",
    "</s>",
    "<pad>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|im_start|>",
    "<|im_end|>",
)
"""Special tokens of the tiny tokenizer: LLaMA's plus those of the llama3 and chatml templates."""

TINY_VOCAB_SIZE = 1024
TINY_MAX_TOKEN_CHARS = 6

TINY_LLAMA_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    # HF's default 0.02 suits widths in the thousands (0.02 ~ 1.3/sqrt(4096)); at width 64 it
    # leaves attention nearly uniform and the model long on the chance plateau. Measured on the
    # quickstart's emo-llama-tiny (600 steps, 420 SynthFER test images): 0.02 -> 34% accuracy,
    # 0.05 -> 49%, 0.08 -> 51%, 0.11 -> 51%, 0.16 -> 40%.
    "initializer_range": 0.08,
}
"""``LlamaConfig`` kwargs of the tiny LLaMA (vocabulary and special ids come from the tokenizer)."""

_CUES = (
    "The eyebrows are raised and drawn together, the eyes are wide open and the mouth is stretched.",
    "The lip corners are pulled up, the cheeks are raised and there are wrinkles around the eyes.",
    "The inner brows are raised, the lip corners are pulled down and the gaze is lowered.",
    "The nose is wrinkled, the upper lip is raised and the brows are lowered.",
    "The brows are lowered and pulled together, the lips are pressed tightly and the eyes glare.",
    "The face is relaxed, the mouth is closed and the brows rest in a natural position.",
    "One lip corner is tightened and raised on one side of the face.",
    "The jaw drops, the mouth opens and the upper eyelids rise.",
    "Describe the facial cues of the person. Which action units are active?",
    "The head is turned to the left, the face is partly occluded by a hand, the light is dim.",
)


def tiny_corpus() -> list[str]:
    """The text the tiny tokenizer is trained on (deterministic)."""
    questions = [category_question(FERID7, video=video) for video in (False, True)]
    agr = agr_sentences(
        {
            "age": torch.arange(len(AGE_LABELS)),
            "gender": torch.arange(len(AGE_LABELS)) % 2,
            "race": torch.arange(len(AGE_LABELS)) % 5,
        }
    )
    corpus = []
    for template in map(get_template, PROMPT_TEMPLATES.names()):
        for question in questions + list(_CUES[-2:]):
            rendered = template.render(question).replace(IMAGE_MARKER, " ")
            corpus += [rendered + template.answer(name) for name in FERID7]
    corpus += list(_CUES) * 3 + agr
    corpus += [" ".join(words) for words in ALIASES.values()] + [" ".join(CANONICAL)]
    corpus += [" ".join(str(i) for i in range(100)), "0-9 10-19 20-29 30-39 40-49 50-59 60-69 70+"]
    return corpus


def build_tiny_tokenizer() -> Any:
    """Trains the tiny byte-level BPE tokenizer and wraps it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=TINY_MAX_TOKEN_CHARS,
        show_progress=False,
    )
    tok.train_from_iterator(tiny_corpus(), trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<unk>", "<s>", "</s>", "<pad>")],
        padding_side="right",
    )


def tiny_llama_config(tokenizer: Any) -> Any:
    """The tiny ``LlamaConfig`` sized to ``tokenizer``'s vocabulary and special ids."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY_LLAMA_CONFIG,
    )


def _recipe_hash() -> str:
    recipe = {
        "version": ASSET_VERSION,
        "config": TINY_LLAMA_CONFIG,
        "special": SPECIAL_TOKENS,
        "vocab": TINY_VOCAB_SIZE,
        "max_chars": TINY_MAX_TOKEN_CHARS,
        "corpus": tiny_corpus(),
        "torch": torch.__version__.split("+")[0],
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def write_tiny_llm(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Builds the tiny LLaMA + tokenizer and writes them with ``save_pretrained`` to ``path``."""
    from transformers import LlamaForCausalLM

    path = Path(path)
    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_llama_config(tokenizer))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@NAMED_LLMS.register("tiny-llama")
@functools.cache
def tiny_llm_dir() -> Path:
    """The directory of the cached tiny LLaMA + tokenizer, created on first use.

    Creation writes to a temporary directory and renames it, so concurrent
    processes (DDP tests, parallel workers) never see a half-written one.
    """
    return _cached(default_cache_dir() / f"tiny-llama-{_recipe_hash()}", "config.json", write_tiny_llm)


def _cached(final: Path, marker: str, write: Any) -> Path:
    """``final``, written by ``write(tmp)`` into a temporary folder and renamed unless ``final/marker`` exists."""
    if (final / marker).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        write(tmp)
        os.rename(tmp, final)
    except OSError:
        if not (final / marker).exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


TINY_BERT_VOCAB_SIZE = 400
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
"""bert-base-uncased's special tokens, in its id order ([PAD] = 0)."""


def write_tiny_bert_tokenizer(path: str | os.PathLike[str]) -> Path:
    """Builds a lower-casing WordPiece vocabulary from :func:`tiny_corpus` and saves it as a BERT tokenizer folder.

    The vocabulary is built here, not by ``tokenizers``' ``WordPieceTrainer``,
    whose ties between equally frequent merges fall differently in every
    process (the same corpus gave three different vocabularies): the special
    tokens, every character and its ``##`` continuation, then the corpus's
    words by falling count (ties alphabetical) up to ``TINY_BERT_VOCAB_SIZE``.
    The same corpus always gives the same file.
    """
    from collections import Counter

    from tokenizers import normalizers, pre_tokenizers
    from transformers import BertTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True)
    split = pre_tokenizers.BertPreTokenizer()
    words = Counter(
        word for text in tiny_corpus() for word, _ in split.pre_tokenize_str(normalizer.normalize_str(text))
    )
    chars = sorted({c for word in words for c in word})
    vocab = list(BERT_SPECIAL_TOKENS) + chars + [f"##{c}" for c in chars]
    for word, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= TINY_BERT_VOCAB_SIZE:
            break
        if word not in vocab:
            vocab.append(word)
    path = Path(path)
    BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True).save_pretrained(path)
    return path


def tiny_bert_tokenizer_dir() -> Path:
    """The directory of the cached tiny BERT tokenizer, created on first use (atomically, as :func:`tiny_llm_dir`)."""
    digest = hashlib.sha256(
        json.dumps([ASSET_VERSION, TINY_BERT_VOCAB_SIZE, BERT_SPECIAL_TOKENS, tiny_corpus()]).encode()
    ).hexdigest()[:12]
    return _cached(default_cache_dir() / f"tiny-bert-tokenizer-{digest}", "tokenizer_config.json", write_tiny_bert_tokenizer)


def check_part(kind: str, name: str, kwargs: dict[str, Any] | None = None, **options: Any) -> Any:
    """Checks a plugin part in a pytest test; raises AssertionError with the report when a check fails.

    Same checks as ``emofer check-part`` (:func:`emofer.partcheck.check_part`, whose
    keyword options it takes): the part builds into a tiny model, its declared
    dims match its output, gradients reach its trainable parameters, and a few
    steps on SynthFER lower the loss.

    Example:
        >>> from emofer.testing import check_part
        >>> def test_my_encoder():
        ...     check_part("encoders", "my-patch-encoder", {"image_size": 32})
    """
    from emofer.partcheck import check_part as run_checks

    report = run_checks(kind, name, kwargs, **options)
    assert report.ok, str(report)
    return report
