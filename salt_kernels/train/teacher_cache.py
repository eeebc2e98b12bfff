"""An offline top-k teacher on disk (docs/design.md, "Top-k teacher"): for every training
sequence of a run's dataset (in the dataset's order and tokenization), the teacher's k most
likely next tokens at each position and their log-probabilities at temperature 1.

Layout of a cache folder:

    manifest.json                 teacher, tokenizer hash, k, dtype, seq_len, sequences, shards
    indices-00000.npy ...         int32 [sequences in shard, seq_len, k]  (numpy .npy, memory-mapped)
    logprobs-00000.npy ...        uint16 bit patterns of bf16 (or float16) [same shape]

Shards are written whole to a temporary name and renamed when complete, and the manifest lists
the completed ones, so a killed run resumes at the first missing shard and ends with the same
bytes as an uninterrupted one (the teacher runs in eval mode on the same batches). A training run
memory-maps the shards and reads only the rows of its batches.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_write_text

FORMAT = "salt-kernels-teacher-cache"
VERSION = 1
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
K_RANGE = (8, 256)


class CacheError(ValueError):
    """A cache that does not fit the run (another tokenizer, k, sequence length) or is broken."""


def tokenizer_hash(tokenizer) -> str:
    """sha256 of the tokenizer's vocabulary (token -> id), which fixes the tokenization."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


def bytes_per_token(k: int) -> int:
    """Disk bytes per token: k int32 indices and k 16-bit log-probabilities."""
    return k * (4 + 2)


@dataclass
class Manifest:
    format: str
    version: int
    teacher: str
    tokenizer: str  # tokenizer_hash
    k: int
    dtype: str  # "bf16" | "fp16"
    seq_len: int
    sequences: int
    shard_sequences: int
    tokens: int
    complete: list  # indices of the completed shards

    @property
    def n_shards(self) -> int:
        return -(-self.sequences // self.shard_sequences)

    def save(self, folder: Path) -> None:
        atomic_write_text(json.dumps(asdict(self), indent=1) + "\n", folder / "manifest.json")

    @classmethod
    def load(cls, folder: Path) -> "Manifest":
        path = Path(folder) / "manifest.json"
        if not path.is_file():
            raise CacheError(f"{folder} is not a teacher cache (no manifest.json); write one with "
                             "`salt-kernels teacher-cache`")
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise CacheError(f"{path} is not a version-{VERSION} teacher cache")
        return cls(**data)


def _shard_paths(folder: Path, i: int) -> tuple[Path, Path]:
    return folder / f"indices-{i:05d}.npy", folder / f"logprobs-{i:05d}.npy"


def _bits(x: torch.Tensor) -> np.ndarray:
    """A 16-bit float tensor as its uint16 bit patterns (numpy has no bf16)."""
    return x.contiguous().view(torch.int16).numpy().view(np.uint16)


@torch.no_grad()
def teacher_topk(teacher, inputs: torch.Tensor, k: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k next-token ids (int32) and log-probabilities (`dtype`) of a causal LM for inputs
    [B, T]: log_softmax in fp32 over the full vocabulary, then torch.topk (ties: lowest id)."""
    logits = teacher(input_ids=inputs).logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    top = torch.topk(logprobs, k, dim=-1, sorted=True)
    return top.indices.to(torch.int32), top.values.to(dtype)


def write_cache(folder, teacher, sequences: torch.Tensor, *, teacher_name: str, tokenizer, k: int = 64,
                dtype: str = "bf16", batch_size: int = 8, shard_sequences: int = 256, device=None,
                progress: bool = True, stop_after_shards: int | None = None) -> Manifest:
    """Writes (or resumes) the cache of `teacher` over `sequences` ([N, seq_len + 1], inputs are
    [:, :-1]) into `folder`. stop_after_shards (tests) ends after that many new shards, as a
    killed run would."""
    if not K_RANGE[0] <= k <= K_RANGE[1]:
        raise CacheError(f"--k must be in [{K_RANGE[0]}, {K_RANGE[1]}], got {k}")
    if dtype not in DTYPES:
        raise CacheError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n, seq_len = sequences.shape[0], sequences.shape[1] - 1
    want = Manifest(FORMAT, VERSION, teacher_name, tokenizer_hash(tokenizer), k, dtype, seq_len, n, shard_sequences,
                    n * seq_len, [])
    manifest = want
    if (folder / "manifest.json").is_file():
        have = Manifest.load(folder)
        same = {f: getattr(have, f) for f in ("teacher", "tokenizer", "k", "dtype", "seq_len", "sequences",
                                               "shard_sequences")}
        if same != {f: getattr(want, f) for f in same}:
            raise CacheError(f"{folder} holds a cache of another configuration ({same}); use a new folder")
        manifest = have
    manifest.save(folder)
    device = device or torch.device("cpu")
    teacher = teacher.to(device).eval()
    todo = [i for i in range(manifest.n_shards) if i not in manifest.complete]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=manifest.n_shards, initial=manifest.n_shards - len(todo), desc="teacher cache", unit="shard")
    written = 0
    for i in todo:
        if stop_after_shards is not None and written >= stop_after_shards:
            break
        lo, hi = i * shard_sequences, min(n, (i + 1) * shard_sequences)
        idx_path, lp_path = _shard_paths(folder, i)
        tmp_idx, tmp_lp = idx_path.with_suffix(".tmp.npy"), lp_path.with_suffix(".tmp.npy")
        out_idx = np.lib.format.open_memmap(tmp_idx, mode="w+", dtype=np.int32, shape=(hi - lo, seq_len, k))
        out_lp = np.lib.format.open_memmap(tmp_lp, mode="w+", dtype=np.uint16, shape=(hi - lo, seq_len, k))
        for b0 in range(lo, hi, batch_size):
            b1 = min(hi, b0 + batch_size)
            ids, lps = teacher_topk(teacher, sequences[b0:b1, :-1].to(device), k, DTYPES[dtype])
            out_idx[b0 - lo:b1 - lo] = ids.cpu().numpy()
            out_lp[b0 - lo:b1 - lo] = _bits(lps.cpu())
        out_idx.flush()
        out_lp.flush()
        del out_idx, out_lp
        os.replace(tmp_idx, idx_path)
        os.replace(tmp_lp, lp_path)
        manifest.complete = sorted(manifest.complete + [i])
        manifest.save(folder)
        written += 1
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return manifest


class TeacherCache:
    """Read side: memory-mapped shards; lookup(sequence ids) -> (indices, logprobs) tensors."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.manifest = m = Manifest.load(self.folder)
        missing = [i for i in range(m.n_shards) if i not in m.complete]
        if missing:
            raise CacheError(f"{self.folder} is incomplete ({len(missing)} of {m.n_shards} shards missing): "
                             "rerun the same `salt-kernels teacher-cache` command to finish it")
        self._idx, self._lp = [], []
        for i in range(m.n_shards):
            idx_path, lp_path = _shard_paths(self.folder, i)
            self._idx.append(np.load(idx_path, mmap_mode="r"))
            self._lp.append(np.load(lp_path, mmap_mode="r"))
        self.dtype = DTYPES[m.dtype]

    def check(self, *, tokenizer, seq_len: int, sequences: int) -> None:
        """CacheError unless the cache was written for this tokenization and dataset."""
        m = self.manifest
        if m.tokenizer != tokenizer_hash(tokenizer):
            raise CacheError(f"the teacher cache {self.folder} was written with another tokenizer "
                             f"(hash {m.tokenizer}, this run's is {tokenizer_hash(tokenizer)}): rebuild it for this run")
        if (m.seq_len, m.sequences) != (seq_len, sequences):
            raise CacheError(f"the teacher cache {self.folder} covers {m.sequences} sequences of {m.seq_len} tokens; "
                             f"this run has {sequences} of {seq_len}: rebuild it with the run's --seq-len and data")

    def lookup(self, seq_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices int32, logprobs bf16/fp16), each [len(seq_ids), seq_len, k]."""
        s = self.manifest.shard_sequences
        ids = seq_ids.tolist()
        idx = np.stack([self._idx[i // s][i % s] for i in ids])
        lp = np.stack([self._lp[i // s][i % s] for i in ids])
        return torch.from_numpy(idx), torch.from_numpy(lp.view(np.int16)).view(self.dtype)
