"""Word n-gram language models for CTC beam search: interpolated Kneser-Ney, written as ARPA.

The one ARPA builder on PyPI (arpabo 0.3) writes fields separated by spaces, which KenLM
refuses, and backoff weights of 1 whatever the smoothing, so its models do not sum to one.
KenLM's own builder (lmplz) is not on PyPI. This module estimates the model the way lmplz and
SRILM's `-kndiscount -interpolate` do, in plain Python (a few million words take seconds):

- highest order: raw counts; lower orders: continuation counts (how many distinct words
  precede the n-gram), except n-grams that start with <s>, which keep raw counts;
- one absolute discount per order, D = n1 / (n1 + 2 n2) from the counts of counts;
- interpolation with the next lower order, down to a uniform distribution over the vocabulary
  plus <unk>;
- n-grams of order >= 2 seen at most `prune` times are dropped, and every context's backoff
  weight is recomputed from what is kept, so each conditional distribution still sums to one.

KenLM reads the result (`.arpa` or `.arpa.gz`) directly.
"""

from __future__ import annotations

import gzip
import io
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
LOG10_ZERO = -99.0  # ARPA's "never": the probability of <s> as a predicted word

Gram = tuple[str, ...]


@dataclass
class NgramLM:
    """A backoff n-gram model: `probs[k]` maps k-grams to P(w | h) (not logs), `backoffs[k]`
    maps k-gram contexts to their backoff weight (1.0 when absent)."""

    order: int
    probs: list[dict[Gram, float]] = field(default_factory=list)
    backoffs: list[dict[Gram, float]] = field(default_factory=list)

    @property
    def vocabulary(self) -> list[str]:
        """The unigrams, <s> and </s> and <unk> included."""
        return sorted(w for (w,) in self.probs[1])

    def prob(self, word: str, context: Gram = ()) -> float:
        """P(word | context) by ARPA backoff semantics (context: the preceding words, oldest
        first; only the last order-1 are used). Unknown words score as <unk>."""
        if (word,) not in self.probs[1]:
            word = UNK
        context = tuple(context)[-(self.order - 1) :] if self.order > 1 else ()
        weight = 1.0
        while context:
            gram = (*context, word)
            p = self.probs[len(gram)].get(gram)
            if p is not None:
                return weight * p
            weight *= self.backoffs[len(context)].get(context, 1.0)
            context = context[1:]
        return weight * self.probs[1][(word,)]

    def write_arpa(self, path: str | os.PathLike) -> Path:
        """Write ARPA text (gzip-compressed when the name ends in .gz, with no timestamp, so
        the same model gives the same bytes); returns the path."""
        path = Path(path)
        with ExitStack() as stack:
            raw = stack.enter_context(open(path, "wb"))
            if path.suffix == ".gz":
                raw = stack.enter_context(
                    gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
                )
            f = stack.enter_context(io.TextIOWrapper(raw, encoding="utf-8"))
            f.write("\\data\\\n")
            for k in range(1, self.order + 1):
                f.write(f"ngram {k}={len(self.probs[k])}\n")
            for k in range(1, self.order + 1):
                f.write(f"\n\\{k}-grams:\n")
                for gram in sorted(self.probs[k]):
                    p = self.probs[k][gram]
                    logp = LOG10_ZERO if p <= 0.0 else math.log10(p)
                    line = f"{logp:.6f}\t{' '.join(gram)}"
                    if k < self.order:
                        line += f"\t{math.log10(self.backoffs[k].get(gram, 1.0)):.6f}"
                    f.write(line + "\n")
            f.write("\n\\end\\\n")
        return path


def count_ngrams(sentences: Iterable[str], order: int) -> list[Counter[Gram]]:
    """Raw counts of every k-gram (k = 1..order) of the sentences wrapped in <s> ... </s>;
    index 0 is empty so that `counts[k]` holds the k-grams."""
    counts: list[Counter[Gram]] = [Counter() for _ in range(order + 1)]
    for sentence in sentences:
        words = [BOS, *sentence.split(), EOS]
        for k in range(1, order + 1):
            grams = counts[k]
            for i in range(len(words) - k + 1):
                grams[tuple(words[i : i + k])] += 1
    return counts


def _kn_counts(raw: list[Counter[Gram]], order: int) -> list[Counter[Gram]]:
    """The counts KN estimates from: raw at the top order and for n-grams starting with <s>,
    else the number of distinct words seen before the n-gram."""
    adjusted: list[Counter[Gram]] = [Counter() for _ in range(order + 1)]
    adjusted[order] = Counter(raw[order])
    for k in range(order - 1, 0, -1):
        for gram in raw[k + 1]:
            adjusted[k][gram[1:]] += 1
        for gram, n in raw[k].items():
            if gram[0] == BOS:
                adjusted[k][gram] = n
    adjusted[1].pop((BOS,), None)
    return adjusted


def _discount(counts: Counter[Gram]) -> float:
    """Ney's absolute discount n1 / (n1 + 2 n2), kept inside (0, 1)."""
    of_counts = Counter(v for v in counts.values() if v <= 2)
    n1, n2 = of_counts[1], of_counts[2]
    if n1 == 0:
        return 0.5
    return min(max(n1 / (n1 + 2 * n2), 0.05), 0.95)


def build_kneser_ney(sentences: Iterable[str], order: int = 3, prune: int = 0) -> NgramLM:
    """Estimate an interpolated Kneser-Ney model of whitespace-tokenised sentences.

    Args:
        sentences: one sentence per item, words separated by spaces (already normalised).
        order: n-gram order (>= 2: KenLM refuses unigram-only models).
        prune: drop n-grams of order >= 2 seen at most this many times (0 keeps all).
    """
    if order < 2:
        raise ValueError(f"order must be at least 2 (KenLM needs bigrams), found {order}")
    raw = count_ngrams(sentences, order)
    if not raw[1]:
        raise ValueError("no sentences to estimate a language model from")
    kn = _kn_counts(raw, order)

    # Unigrams: discounted continuation counts interpolated with a uniform distribution over
    # the vocabulary (<s> excluded: it is never predicted) and <unk>.
    d1 = _discount(kn[1])
    total = sum(kn[1].values())
    uniform = d1 * len(kn[1]) / total / (len(kn[1]) + 1)
    full: list[dict[Gram, float]] = [{} for _ in range(order + 1)]
    full[1] = {gram: max(n - d1, 0.0) / total + uniform for gram, n in kn[1].items()}
    full[1][(UNK,)] = uniform
    full[1][(BOS,)] = 0.0

    # Higher orders: P(w | h) = max(c(h w) - D, 0) / c(h) + gamma(h) P(w | h'), where
    # gamma(h) = D x (distinct continuations of h) / c(h). Every h' w is seen (h w extends it).
    for k in range(2, order + 1):
        d = _discount(kn[k])
        totals: dict[Gram, float] = defaultdict(float)
        types: dict[Gram, int] = defaultdict(int)
        for gram, n in kn[k].items():
            totals[gram[:-1]] += n
            types[gram[:-1]] += 1
        lower = full[k - 1]
        for gram, n in kn[k].items():
            context = gram[:-1]
            gamma = d * types[context] / totals[context]
            full[k][gram] = max(n - d, 0.0) / totals[context] + gamma * lower[gram[1:]]

    probs = [{}, full[1]] + [
        {g: p for g, p in full[k].items() if not (prune and raw[k][g] <= prune)}
        for k in range(2, order + 1)
    ]
    lm = NgramLM(order, probs, [{} for _ in range(order + 1)])
    _set_backoffs(lm)
    return lm


def _set_backoffs(lm: NgramLM) -> None:
    """Backoff weights that make every context's distribution sum to one given what was kept:
    bow(h) = (1 - sum_kept P(w | h)) / (1 - sum_kept P(w | h')), h' = h without its first word
    (for an unpruned model this is KN's gamma(h)).

    Orders go bottom-up, so that P(w | h') already uses the lower order's weights."""
    for k in range(2, lm.order + 1):
        kept_mass: dict[Gram, float] = defaultdict(float)
        lower_mass: dict[Gram, float] = defaultdict(float)
        for gram, p in lm.probs[k].items():
            context = gram[:-1]
            kept_mass[context] += p
            lower_mass[context] += lm.prob(gram[-1], context[1:])
        backoffs = lm.backoffs[k - 1]
        for context, mass in kept_mass.items():
            backoffs[context] = max(1.0 - mass, 1e-12) / max(1.0 - lower_mass[context], 1e-12)
