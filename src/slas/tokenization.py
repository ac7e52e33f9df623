"""CLIP and T5 tokenizers assembled offline with the ``tokenizers`` library.

Both start from the 256-character byte-level alphabet, so any text tokenizes; ``words`` become single
tokens (CLIP: BPE merges that build each word; T5: Unigram pieces ``"▁word"`` that outscore spelling it
out). The shapes world gives its vocabulary this way; the unit tests use no words at all.

Transformers 5 notes (why the tokenizers look the way they do):

* ``CLIPTokenizerFast`` / ``T5TokenizerFast`` are plain aliases of ``CLIPTokenizer`` /
  ``T5Tokenizer``; both are ``tokenizers``-backed.
* ``from_pretrained`` does not reload ``tokenizer.json`` verbatim for these classes: it pulls the
  vocab (and merges) out of it and re-runs the class ``__init__``, which rebuilds its own
  normalizer / pre-tokenizer / model. A custom backend therefore only survives a round trip if it
  mirrors the class's own pipeline exactly.
* ``CLIPTokenizer`` hard-codes ``end_of_word_suffix="</w>"``: with no merges, the last character
  of every word is looked up as ``"<c></w>"``, so the vocab also carries the 256 ``</w>`` variants
  (the same layout as the real CLIP vocab: bytes, bytes + ``</w>``, then specials).
* ``T5Tokenizer`` hard-codes a ``Unigram`` model (and on reload builds ``Unigram(vocab)``, which
  rejects a BPE ``dict`` vocab), so a byte-level BPE cannot round-trip as a T5 tokenizer. The T5
  tokenizer is therefore a ``Unigram`` over the same alphabet plus ``"▁"``, with ``extra_ids=0``.
* Case: the vocabularies hold lowercased words, so the INPUT must be lowercased too, in the saved
  tokenizer (users load it through diffusers, not through our code). ``CLIPTokenizer`` rebuilds a
  ``Lowercase`` normalizer on reload (real CLIP lowercases). ``T5Tokenizer`` rebuilds no normalizer except
  SentencePiece's precompiled charsmap (``normalizers.Precompiled``, read back from ``tokenizer.json``:
  that is where real T5 keeps its normalisation), so a plain ``Lowercase`` would be dropped on reload and
  "Put" would be spelled out letter by letter while "put" is one token. :func:`build_t5_tokenizer`
  therefore carries :func:`ascii_lowercase_charsmap` (A-Z -> a-z) as its normalizer.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE, Unigram
from transformers import CLIPTokenizerFast, T5TokenizerFast

__all__ = [
    "CLIP_MAX_LENGTH", "T5_MAX_LENGTH", "ascii_lowercase_charsmap", "build_clip_tokenizer", "build_t5_tokenizer",
    "byte_level_alphabet",
]

CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 512

# Same pre-tokenisation as transformers' CLIPTokenizer (it rebuilds exactly this on reload).
_CLIP_SPLIT_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
_CLIP_BOS = "<|startoftext|>"
_CLIP_EOS = "<|endoftext|>"
_T5_PAD, _T5_EOS, _T5_UNK, _T5_SPACE = "<pad>", "</s>", "<unk>", "\u2581"


def byte_level_alphabet() -> list[str]:
    """The 256 byte-level characters, in a fixed (sorted) order."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    assert len(alphabet) == 256
    return alphabet


def ascii_lowercase_charsmap() -> bytes:
    """A SentencePiece precompiled charsmap that maps ``A``-``Z`` to ``a``-``z`` and leaves everything else.

    The format, as ``tokenizers.normalizers.Precompiled`` reads it (SentencePiece's ``precompiled_charsmap``;
    the trie is a darts-clone double array): a little-endian u32 byte size of the array, the array of u32
    units, then the replacement strings, each NUL-terminated. A unit holds a label (bits 0-7), a has-leaf
    flag (bit 8) and an offset (bits 10-30); a leaf unit sets bit 31 and holds the byte position of its
    replacement. Lookup of byte ``c``: from the root (unit 0, offset 256) to unit ``256 ^ c``, which must be
    labelled ``c``; its offset leads to its leaf at ``512 + k``. Bytes other than A-Z land on empty units
    (label 0: no match), and every position a lookup can reach lies in the 768 units, so no input reads
    past the array.

    Only ASCII letters are folded (the worlds' vocabularies are ASCII words); one quirk of the library's
    reader: a capital followed by a combining mark (one grapheme, e.g. "A" + U+0301) becomes the bare
    lowercase letter.
    """
    units, replacements = [0] * 768, b""
    units[0] = 256 << 10
    for k, c in enumerate(range(ord("A"), ord("Z") + 1)):
        node, leaf = 256 ^ c, 512 + k
        units[node] = ((node ^ leaf) << 10) | (1 << 8) | c
        units[leaf] = (1 << 31) | len(replacements)
        replacements += bytes([c]).lower() + b"\0"
    array = struct.pack(f"<{len(units)}I", *units)
    return struct.pack("<I", len(array)) + array + replacements


def _clip_backend(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    backend = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token=_CLIP_EOS,
        )
    )
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    return backend


def build_clip_tokenizer(model_max_length: int = CLIP_MAX_LENGTH, *, words: Sequence[str] = ()) -> CLIPTokenizerFast:
    """Byte-level BPE CLIP tokenizer: 256 bytes, 256 ``</w>`` bytes, the merges of ``words``, bos, eos.

    Merges are added until every word encodes as one token: a word whose spelling an earlier merge
    splits differently gets merges for the pieces it actually splits into (lowest priority), so words
    never interfere with each other.
    """
    alphabet = byte_level_alphabet()
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({ch + "</w>": i + len(alphabet) for i, ch in enumerate(alphabet)})
    merges: list[tuple[str, str]] = []
    words = sorted({w.lower() for w in words})
    for _ in range(64):
        pending = False
        backend = _clip_backend(dict(vocab), list(merges))
        for w in words:
            pieces = backend.encode(w, add_special_tokens=False).tokens
            if len(pieces) == 1:
                continue
            pending = True
            cur = pieces[0]
            for p in pieces[1:]:
                if (cur, p) not in merges:
                    merges.append((cur, p))
                vocab.setdefault(cur + p, len(vocab))
                cur += p
        if not pending:
            break
    else:  # pragma: no cover - a word list that never converges would be a bug here
        raise RuntimeError("could not make every word a single CLIP token")
    vocab[_CLIP_BOS] = len(vocab)
    vocab[_CLIP_EOS] = len(vocab)
    # CLIPTokenizer installs its RobertaProcessing post-processor (bos ... eos) itself.
    return CLIPTokenizerFast(
        tokenizer_object=_clip_backend(vocab, merges),
        bos_token=_CLIP_BOS,
        eos_token=_CLIP_EOS,
        unk_token=_CLIP_EOS,
        pad_token=_CLIP_EOS,
        model_max_length=model_max_length,
    )


def build_t5_tokenizer(model_max_length: int = T5_MAX_LENGTH, *, words: Sequence[str] = (),
                       lowercase: bool = True) -> T5TokenizerFast:
    """T5 tokenizer: Unigram over ``<pad>, </s>, <unk>, ▁``, the 256 byte-level characters and ``▁word``.

    ``lowercase`` (the default) folds A-Z in the input, as the lowercased vocabulary needs, through the
    normalizer a saved T5 tokenizer keeps (:func:`ascii_lowercase_charsmap`); ``False`` only for a model
    that was trained on case-sensitive ids (the product-in-hand world's shipped edit model).
    """
    pieces = [(_T5_PAD, 0.0), (_T5_EOS, 0.0), (_T5_UNK, 0.0), (_T5_SPACE, -1.0)]
    pieces += [(ch, -2.0) for ch in byte_level_alphabet()]
    pieces += [(_T5_SPACE + w, -1.0) for w in sorted({w.lower() for w in words})]
    backend = Tokenizer(Unigram(pieces, unk_id=2, byte_fallback=False))
    if lowercase:
        backend.normalizer = normalizers.Precompiled(ascii_lowercase_charsmap())
    # Same pre-tokeniser/decoder as transformers' T5Tokenizer (it rebuilds exactly this on reload).
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement=_T5_SPACE, prepend_scheme="always", split=True),
        ]
    )
    backend.decoder = decoders.Metaspace(replacement=_T5_SPACE, prepend_scheme="always", split=True)
    # T5Tokenizer installs its "$A </s>" post-processor itself.
    return T5TokenizerFast(
        tokenizer_object=backend,
        eos_token=_T5_EOS,
        unk_token=_T5_UNK,
        pad_token=_T5_PAD,
        extra_ids=0,
        model_max_length=model_max_length,
    )
