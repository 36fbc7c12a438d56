"""fastText's language identification model run in numpy, a batch of posts at a time.

The worker's language check (:mod:`worker.language`) calls fastText's ``predict`` once per
post; measured in the worker under a burst, that call was a sixth of the worker's CPU, most of
it in the library's per-word work: the character n-grams of every word hashed, each looked up
in the pruned model's table, their vectors decoded and added. Posts repeat their words, so
this module does that work once per distinct word (the word's vectors summed and cached), and
the rest, the average over the post and the hierarchical softmax over the 176 languages, for
a whole batch in a few array operations.

It reads the model file the library ships (fastText's binary format, version 12: a
supervised model with a pruned, product-quantized input matrix, a dense output matrix and a
hierarchical softmax) and reproduces the library's ``predict`` for it: the same tokens (split
on fastText's delimiters, the end-of-line token, nothing after a literal ``</s>``, no
``__label__`` tokens), the same n-grams and hashes (FNV-1a over UTF-8 bytes, each byte sign
extended as fastText does), the same tree (built from the labels' counts), the same
probabilities and the same top ``k``. The sums run in float64 where the library adds float32
in another order, so a probability can differ from the library's in about its sixth decimal
(``tests/unit/test_language.py`` holds both to each other). :func:`load` returns None for a
file it does not recognise; the caller then keeps the library's own call.
"""

from __future__ import annotations

import contextlib
import re
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_MAGIC, _VERSION = 793712314, 12
_HIERARCHICAL_SOFTMAX, _SUPERVISED = 1, 3
_KSUB = 256  # centroids per sub-quantizer
_EOS = "</s>"
_LABEL = "__label__"
_DELIMITERS = str.maketrans({c: " " for c in "\n\r\t\v\f\0"})  # and " ": fastText's word breaks
_OTHER_DELIMITERS = re.compile("[\n\r\t\v\f\0]")
_LOG_FLOOR = 1e-5  # fastText's std_log adds it before the log
_CACHE_WORDS = 1 << 16  # words outside the model's vocabulary kept summed at once


class _Bytes:
    """A reader over the model file's little-endian fields."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return values

    def one(self, fmt: str) -> object:
        return self.take(fmt)[0]

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.at)
        self.at += out.nbytes
        return out

    def word(self) -> bytes:
        end = self.data.index(b"\0", self.at)
        word, self.at = self.data[self.at : end], end + 1
        return word


def _centroids(src: _Bytes) -> tuple[np.ndarray, int, int]:
    """A product quantizer: its centroids as (sub-quantizer, code, sub-dimension), the
    dimension and the sub-dimension."""
    dim, nsubq, dsub, lastdsub = src.take("4i")
    if dsub * (nsubq - 1) + lastdsub != dim or lastdsub != dsub:
        raise ValueError("a product quantizer with an uneven last part")
    return src.array("<f4", dim * _KSUB).reshape(nsubq, _KSUB, dsub), dim, dsub


def _quantized_rows(src: _Bytes) -> np.ndarray:
    """A quantized matrix, decoded: the rows the library adds, in float32."""
    qnorm = src.one("?")
    rows, dim = src.take("2q")
    codes = src.array("u1", src.one("i"))
    centroids, pq_dim, _ = _centroids(src)
    if pq_dim != dim:
        raise ValueError("a quantizer of another dimension than its matrix")
    nsubq = centroids.shape[0]
    codes = codes.reshape(rows, nsubq)
    decoded = centroids[np.arange(nsubq), codes].reshape(rows, dim)  # (rows, nsubq, dsub) flattened
    if qnorm:
        norm_codes = src.array("u1", rows)
        norms, _, _ = _centroids(src)
        decoded = decoded * norms[0, norm_codes, 0][:, None]
    return decoded.astype(np.float32)


class FastTextLanguages:
    """The model, ready to run a batch of posts (:meth:`predict_many`)."""

    def __init__(self, data: bytes) -> None:
        src = _Bytes(data)
        if src.take("2i") != (_MAGIC, _VERSION):
            raise ValueError("not a fastText model of version 12")
        dim, _ws, _epoch, _min_count, _neg, word_ngrams, loss, model, bucket, minn, maxn, _ = src.take("12i")
        src.one("d")
        if model != _SUPERVISED or loss != _HIERARCHICAL_SOFTMAX or word_ngrams > 1:
            raise ValueError("not a supervised model with a hierarchical softmax and no word n-grams")
        size, nwords, nlabels = src.take("3i")
        _ntokens, pruned = src.take("2q")
        entries = [(src.word(), src.take("qb")) for _ in range(size)]
        if pruned <= 0:
            raise ValueError("not a pruned model")
        pairs = src.array("<i4", 2 * pruned).reshape(pruned, 2)
        if not src.one("?"):  # quant_input
            raise ValueError("not a quantized model")
        inputs = _quantized_rows(src)
        if src.one("?"):  # qout
            raise ValueError("a quantized output matrix")
        out_rows, out_dim = src.take("2q")
        output = src.array("<f4", out_rows * out_dim).reshape(out_rows, out_dim)
        if src.at != len(data) or out_dim != dim or inputs.shape[1] != dim or out_rows < nlabels:
            raise ValueError("a model file of an unexpected layout")

        self.dim, self.bucket, self.minn, self.maxn = dim, bucket, minn, maxn
        self.nwords = nwords
        self._inputs = inputs
        order = np.argsort(pairs[:, 0])
        self._pruned_keys = pairs[order, 0].astype(np.int64)
        self._pruned_rows = pairs[order, 1].astype(np.int64)
        self.labels = [word.decode("utf-8").removeprefix(_LABEL) for word, _ in entries[nwords:]]
        self._tree(np.array([count for _, (count, _type) in entries[nwords:]], dtype=np.int64), output)

        # Every word of the vocabulary summed once; words outside it as they come.
        self._sums = np.zeros((nwords + _CACHE_WORDS, dim), dtype=np.float64)
        self._counts = np.zeros(nwords + _CACHE_WORDS, dtype=np.int64)
        self._vocabulary: dict[str, int] = {}
        for i, (word, _) in enumerate(entries[:nwords]):
            with contextlib.suppress(UnicodeDecodeError):  # else no post's text can equal it
                self._vocabulary[word.decode("utf-8")] = i
        known = [w for w in self._vocabulary if w != _EOS]
        rows = [self._vocabulary[w] for w in known]
        self._sums[rows], self._counts[rows] = self._ngram_sums(known)
        self._sums[: self.nwords] += inputs[: self.nwords]  # a known word's own row, with its n-grams
        self._counts[: self.nwords] += 1
        self._eos = self._vocabulary[_EOS]
        self._reset_cache()

    def _tree(self, counts: np.ndarray, output: np.ndarray) -> None:
        """The library's Huffman tree over the labels (by their counts, most frequent first),
        kept as its levels from the root: each one's nodes, their parents and the branch taken."""
        n = len(counts)
        total = 2 * n - 1
        count = np.full(total, 1e15)
        count[:n] = counts
        left, right = [-1] * total, [-1] * total
        leaf, node = n - 1, n
        for i in range(n, total):
            picked = []
            for _ in range(2):
                if leaf >= 0 and count[leaf] < count[node]:
                    picked.append(leaf)
                    leaf -= 1
                else:
                    picked.append(node)
                    node += 1
            left[i], right[i] = picked
            count[i] = count[picked[0]] + count[picked[1]]
        # Walked from the root a level at a time: each node's score is its parent's plus the
        # log-probability of the branch taken, a row of the (2 inner nodes' branches, posts) terms.
        parent, branch, depth = [0] * total, [0] * total, [0] * total
        for i in range(total - 1, n - 1, -1):  # parents come after their children: walk down
            for child, went_right in ((left[i], 0), (right[i], 1)):
                parent[child], depth[child] = i, depth[i] + 1
                branch[child] = (i - n) + (n - 1) * went_right
        levels: dict[int, list[int]] = {}
        for node in range(total - 1):
            levels.setdefault(depth[node], []).append(node)
        self._levels = [
            (np.array(nodes), np.array([parent[c] for c in nodes]), np.array([branch[c] for c in nodes]))
            for _, nodes in sorted(levels.items())
        ]
        self._root, self._nodes = total - 1, total
        self._inner = output[: n - 1].astype(np.float32)  # row i: the inner node n + i

    def _ngram_sums(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per word, the sum of the input rows of the character n-grams of ``<word>`` that the
        pruned model kept, and how many they are: fastText's n-grams (``minn`` to ``maxn``
        characters, never past the word's end), hashed and looked up for all words at once."""
        sums = np.zeros((len(words), self.dim), dtype=np.float64)
        counts = np.zeros(len(words), dtype=np.int64)
        if not words:
            return sums, counts
        wrapped = [f"<{w}>" for w in words]
        data = np.frombuffer("".join(wrapped).encode("utf-8"), dtype=np.uint8)
        starts = np.flatnonzero((data & 0xC0) != 0x80)  # where each character's bytes begin
        starts = np.append(starts, len(data))
        sizes = np.diff(starts)  # bytes per character
        chars = np.array([len(w) for w in wrapped])
        word_of = np.repeat(np.arange(len(words)), chars)  # per character
        room = np.repeat(np.cumsum(chars), chars) - np.arange(len(word_of))  # characters to the word's end
        signed = data.astype(np.uint32) | np.where(data >= 0x80, np.uint32(0xFFFFFF80), np.uint32(0))
        hashes = np.full(len(word_of), 2166136261, dtype=np.uint32)
        found_rows, found_words = [], []
        for n in range(1, self.maxn + 1):
            at = np.flatnonzero(room >= n)  # n-grams of n characters starting here fit in the word
            char = at + n - 1  # the n-th character of each, folded into its hash
            step = hashes[at]
            for byte in range(int(sizes[char].max()) if len(char) else 0):
                more = byte < sizes[char]
                folded = (step ^ signed[np.minimum(starts[char] + byte, len(data) - 1)]) * np.uint32(16777619)
                step = np.where(more, folded, step)
            hashes[at] = step
            if n >= self.minn and len(at):
                keys = (step % np.uint32(self.bucket)).astype(np.int64)
                slot = np.minimum(np.searchsorted(self._pruned_keys, keys), len(self._pruned_keys) - 1)
                kept = self._pruned_keys[slot] == keys
                found_rows.append(self.nwords + self._pruned_rows[slot[kept]])
                found_words.append(word_of[at[kept]])
        rows, owners = np.concatenate(found_rows), np.concatenate(found_words)
        counts += np.bincount(owners, minlength=len(words))
        np.add.at(sums, owners, self._inputs[rows].astype(np.float64))
        return sums, counts

    def _reset_cache(self) -> None:
        self._words: dict[str, int] = dict(self._vocabulary)
        self._next = self.nwords

    def _hidden(self, texts: Sequence[str]) -> np.ndarray:
        """Per post, the average of its input rows (fastText's hidden layer), as (posts, dim)."""
        parts, flat, lengths, new = [], [], [], []
        words = self._words
        for text in texts:
            if _OTHER_DELIMITERS.search(text) is not None:
                text = text.translate(_DELIMITERS)
            tokens = text.split(" ")
            if _EOS in tokens:
                tokens = tokens[: tokens.index(_EOS)]
            if "" in tokens:
                tokens = [t for t in tokens if t]
            if _LABEL in text:
                tokens = [t for t in tokens if not t.startswith(_LABEL)]
            rows = list(map(words.get, tokens))
            if None in rows:
                missing = {t for t, row in zip(tokens, rows, strict=True) if row is None}
                if self._next + len(missing) > len(self._sums):  # full: what came before, then start over
                    self._sum_new(new)
                    parts.append(self._average(flat, lengths))
                    flat, lengths, new = [], [], []
                    self._reset_cache()
                    words = self._words
                    missing = {t for t in tokens if t not in words}
                    if self.nwords + len(missing) > len(self._sums):
                        raise ValueError(f"a post of more than {_CACHE_WORDS} distinct words the model lacks")
                for token in missing:
                    words[token] = self._next
                    self._next += 1
                new.extend(missing)
                rows = [words[t] for t in tokens]
            rows.append(self._eos)
            flat.extend(rows)
            lengths.append(len(rows))
        self._sum_new(new)
        parts.append(self._average(flat, lengths))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _sum_new(self, new: list[str]) -> None:
        """Cache the sums of the rows of words seen for the first time."""
        if new:
            rows = [self._words[token] for token in new]
            self._sums[rows], self._counts[rows] = self._ngram_sums(new)

    def _average(self, flat: list[int], lengths: list[int]) -> np.ndarray:
        if not lengths:
            return np.zeros((0, self.dim))
        rows = np.asarray(flat, dtype=np.int64)
        starts = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        sums = np.add.reduceat(self._sums[rows], starts, axis=0)
        counts = np.add.reduceat(self._counts[rows], starts)
        return sums / counts[:, None]  # every post has at least its end-of-line row

    def top(self, texts: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Per text, its ``k`` most likely languages, most likely first, as indices into
        :attr:`labels` and probabilities, as the library's ``predict(text + "\\n", k, 0.0)``
        gives them: (texts, k) each, with index -1 and probability 0 where the library returns
        fewer (it drops languages below a probability of 1e-5)."""
        if not texts:
            return np.zeros((0, k), dtype=np.int64), np.zeros((0, k))
        hidden = self._hidden(texts).astype(np.float32)
        # Per inner node and post, the probability of the right branch; then the log of each
        # branch as fastText scores it (its floor of 1e-5 added), left branches first.
        # Not ``@``: numpy hands a product this size to OpenBLAS's threads, which then spin
        # for CPU between batches (measured: the worker's CPU for the check four times over);
        # einsum's own loop runs in this thread.
        margins = np.einsum("nd,pd->np", self._inner, hidden)
        with np.errstate(over="ignore"):  # exp of a large margin: infinity, a probability of 0
            p_right = 1.0 / (1.0 + np.exp(-margins))
        branches = np.log(np.concatenate([1.0 - p_right, p_right]) + np.float32(_LOG_FLOOR))
        node_scores = np.empty((self._nodes, len(texts)), dtype=np.float32)
        node_scores[self._root] = 0.0
        for nodes, parents, taken in self._levels:
            node_scores[nodes] = node_scores[parents] + branches[taken]
        scores = node_scores[: len(self.labels)].T
        k = min(k, scores.shape[1])
        rows = np.arange(len(texts))
        top = np.empty((len(texts), k), dtype=np.int64)
        best = np.empty((len(texts), k), dtype=np.float32)
        for j in range(k):  # k is small: a pass per rank beats sorting every language
            top[:, j] = scores.argmax(axis=1)
            best[:, j] = scores[rows, top[:, j]]
            scores[rows, top[:, j]] = -np.inf
        dropped = best < np.float32(np.log(_LOG_FLOOR))  # the library's cut, in its float32
        top[dropped] = -1
        return top, np.where(dropped, 0.0, np.exp(best.astype(np.float64)))

    def predict_many(self, texts: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """Per text, its ``k`` most likely languages with their probabilities, most likely
        first (:meth:`top` as the library's pairs)."""
        top, probs = self.top(texts, k)
        labels = self.labels
        return [
            [(labels[j], p) for j, p in zip(row_top, row_probs, strict=True) if j >= 0]
            for row_top, row_probs in zip(top.tolist(), probs.tolist(), strict=True)
        ]


def load(path: Path) -> FastTextLanguages | None:
    """The model in ``path``, or None where the file is not one this module reproduces."""
    try:
        return FastTextLanguages(path.read_bytes())
    except (OSError, ValueError, KeyError, IndexError, struct.error, UnicodeDecodeError):
        return None
