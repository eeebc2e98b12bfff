"""An offline top-k teacher on disk (docs/design.md, "Top-k teacher"): for every training
sequence of a run's dataset (in the dataset's order and tokenization), the teacher's k most
likely next tokens at each position and their log-probabilities at temperature 1.

Layout of a cache folder:

    manifest.json                 teacher, tokenizer hash, k, dtype, seq_len, sequences, shards,
                                  the data's hash, the teacher's vocabulary, the build time
    tokenizer/                    the tokenizer the cache was written with (`salt-kernels
                                  teacher-cache` saves it; a run with --teacher-cache uses it)
    indices-00000.npy ...         int32 [sequences in shard, seq_len, k]  (numpy .npy, memory-mapped)
    logprobs-00000.npy ...        uint16 bit patterns of bf16 (or float16) [same shape]
    scores-00000.npy ...          float32 [sequences in shard]: each sequence's SALT data-selection
                                  score (selection.score_from_logits with the manifest's
                                  select_top_k), from the same teacher forward, so that
                                  `train --teacher-cache DIR --select-data` needs no teacher either

Shards are written whole to a temporary name and renamed when complete, and the manifest lists
the completed ones, so a killed run resumes at the first missing shard and ends with the same
bytes as an uninterrupted one (the teacher runs in eval mode on the same batches). A training run
memory-maps the shards and reads only the rows of its batches.

build_teacher_cache (what `salt-kernels teacher-cache` and the demo's salt-topk run call) makes
the training sequences with the trainer's own code (build.training_data: same split, tokenizer
and sequence length, so cache row i is the run's training sequence i) and writes the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .checkpoint import atomic_write_text
from .config import DEVICES, DTYPES as TEACHER_DTYPES, ConfigError, DataConfig, opt

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


def sequences_hash(sequences: torch.Tensor) -> str:
    """sha256 of a dataset's training sequences (their shape and token ids)."""
    h = hashlib.sha256(repr(tuple(sequences.shape)).encode())
    h.update(np.ascontiguousarray(sequences.numpy().astype(np.int64, copy=False)).tobytes())
    return h.hexdigest()[:16]


SCORE_BYTES = 4  # a float32 data-selection score per sequence


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
    data: str = ""  # sequences_hash of the sequences the cache covers
    teacher_vocab: int = 0  # rows of the teacher's output layer (index range of the cache)
    build_time_s: float = 0.0  # wall-clock of writing the shards, summed over resumed writes
    select_top_k: int = 0  # the top-k of the data-selection scores in scores-*.npy (0: none stored)

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


def _shard_paths(folder: Path, i: int) -> tuple[Path, Path, Path]:
    return folder / f"indices-{i:05d}.npy", folder / f"logprobs-{i:05d}.npy", folder / f"scores-{i:05d}.npy"


def _bits(x: torch.Tensor) -> np.ndarray:
    """A 16-bit float tensor as its uint16 bit patterns (numpy has no bf16)."""
    return x.contiguous().view(torch.int16).numpy().view(np.uint16)


@torch.no_grad()
def teacher_pass(teacher, sequences: torch.Tensor, k: int, dtype: torch.dtype,
                 select_top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One teacher forward over sequences [B, T + 1] (inputs [:, :-1], targets [:, 1:]): the top-k
    next-token ids (int32) and log-probabilities (`dtype`) at each position (log_softmax in fp32
    over the full vocabulary, then torch.topk, ties to the lowest id), and each sequence's data-
    selection score (float32 [B], selection.score_from_logprobs on the same log-softmax and top-k:
    what `train --select-data` computes with the teacher model)."""
    from .selection import score_from_logprobs

    logits = teacher(input_ids=sequences[:, :-1]).logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    top = torch.topk(logprobs, min(max(k, select_top_k), logprobs.shape[-1]), dim=-1, sorted=True)
    scores = score_from_logprobs(logprobs, sequences[:, 1:], top.indices[..., :select_top_k])
    top_k_ids, top_k_lps = top.indices[..., :k], top.values[..., :k]
    return top_k_ids.to(torch.int32), top_k_lps.to(dtype), scores.float()


def write_cache(folder, teacher, sequences: torch.Tensor, *, teacher_name: str, tokenizer, k: int = 64,
                dtype: str = "bf16", batch_size: int = 8, shard_sequences: int = 256, select_top_k: int = 10,
                device=None, progress: bool = True, stop_after_shards: int | None = None) -> Manifest:
    """Writes (or resumes) the cache of `teacher` over `sequences` ([N, seq_len + 1], inputs are
    [:, :-1]) into `folder`, with the data-selection scores at `select_top_k` from the same
    forward. stop_after_shards (tests) ends after that many new shards, as a killed run would."""
    if not K_RANGE[0] <= k <= K_RANGE[1]:
        raise CacheError(f"--k must be in [{K_RANGE[0]}, {K_RANGE[1]}], got {k}")
    if select_top_k < 1:
        raise CacheError(f"--select-top-k must be at least 1, got {select_top_k}")
    if dtype not in DTYPES:
        raise CacheError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = plan_cache(folder, teacher, sequences, teacher_name=teacher_name, tokenizer=tokenizer, k=k,
                          dtype=dtype, shard_sequences=shard_sequences, select_top_k=select_top_k)
    n, seq_len = manifest.sequences, manifest.seq_len
    manifest.save(folder)
    device = device or torch.device("cpu")
    teacher = teacher.to(device).eval()
    todo = [i for i in range(manifest.n_shards) if i not in manifest.complete]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        done = sum(min(n, (i + 1) * shard_sequences) - i * shard_sequences for i in manifest.complete)
        bar = tqdm(total=n, initial=done, desc="teacher cache", unit="seq")
    written = 0
    t0 = time.perf_counter()
    for i in todo:
        if stop_after_shards is not None and written >= stop_after_shards:
            break
        lo, hi = i * shard_sequences, min(n, (i + 1) * shard_sequences)
        paths = _shard_paths(folder, i)
        tmp_idx, tmp_lp, tmp_sc = (path.with_suffix(".tmp.npy") for path in paths)
        out_idx = np.lib.format.open_memmap(tmp_idx, mode="w+", dtype=np.int32, shape=(hi - lo, seq_len, k))
        out_lp = np.lib.format.open_memmap(tmp_lp, mode="w+", dtype=np.uint16, shape=(hi - lo, seq_len, k))
        out_sc = np.lib.format.open_memmap(tmp_sc, mode="w+", dtype=np.float32, shape=(hi - lo,))
        for b0 in range(lo, hi, batch_size):
            b1 = min(hi, b0 + batch_size)
            ids, lps, scores = teacher_pass(teacher, sequences[b0:b1].to(device), k, DTYPES[dtype], select_top_k)
            out_idx[b0 - lo:b1 - lo] = ids.cpu().numpy()
            out_lp[b0 - lo:b1 - lo] = _bits(lps.cpu())
            out_sc[b0 - lo:b1 - lo] = scores.cpu().numpy()
            if bar is not None:
                bar.update(b1 - b0)
        for out_map in (out_idx, out_lp, out_sc):
            out_map.flush()
        del out_idx, out_lp, out_sc
        for tmp, path in zip((tmp_idx, tmp_lp, tmp_sc), paths):
            os.replace(tmp, path)
        manifest.complete = sorted(manifest.complete + [i])
        manifest.build_time_s = round(manifest.build_time_s + time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        manifest.save(folder)
        written += 1
    if bar is not None:
        bar.close()
    return manifest


def plan_cache(folder, teacher, sequences: torch.Tensor, *, teacher_name: str, tokenizer, k: int, dtype: str,
               shard_sequences: int, select_top_k: int) -> Manifest:
    """The manifest write_cache works to: the one already in `folder` (a resumed write), which
    must describe the same cache, or a new one. Writes nothing."""
    from .step import output_rows

    folder = Path(folder)
    n, seq_len = sequences.shape[0], sequences.shape[1] - 1
    want = Manifest(FORMAT, VERSION, teacher_name, tokenizer_hash(tokenizer), k, dtype, seq_len, n, shard_sequences,
                    n * seq_len, [], data=sequences_hash(sequences), teacher_vocab=output_rows(teacher) or 0,
                    select_top_k=select_top_k)
    if not (folder / "manifest.json").is_file():
        return want
    have = Manifest.load(folder)
    keys = ("teacher", "tokenizer", "k", "dtype", "seq_len", "sequences", "shard_sequences", "data", "teacher_vocab",
            "select_top_k")
    diffs = [f"{f}: {getattr(have, f)!r} there, {getattr(want, f)!r} now" for f in keys
             if getattr(have, f) != getattr(want, f)]
    if diffs:
        raise CacheError(f"{folder} holds a cache of another configuration ({'; '.join(diffs)}): "
                         "use a new folder, or delete this one")
    return have


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
            idx_path, lp_path, _ = _shard_paths(self.folder, i)
            self._idx.append(np.load(idx_path, mmap_mode="r"))
            self._lp.append(np.load(lp_path, mmap_mode="r"))
        self.dtype = DTYPES[m.dtype]

    def scores(self, select_top_k: int) -> torch.Tensor:
        """float32 [sequences]: the data-selection scores the teacher pass stored, computed with
        `select_top_k`; CacheError when the cache holds none or holds them for another top-k."""
        m = self.manifest
        if not m.select_top_k:
            raise CacheError(f"the teacher cache {self.folder} holds no data-selection scores: rebuild it with "
                             "`salt-kernels teacher-cache` (which scores the sequences in the same pass)")
        if m.select_top_k != select_top_k:
            raise CacheError(f"the teacher cache {self.folder} scored the sequences with --select-top-k "
                             f"{m.select_top_k}, this run asks for {select_top_k}: pass --select-top-k "
                             f"{m.select_top_k}, or rebuild the cache with --select-top-k {select_top_k}")
        parts = [np.load(_shard_paths(self.folder, i)[2]) for i in range(m.n_shards)]
        return torch.from_numpy(np.concatenate(parts))

    def check(self, *, tokenizer, seq_len: int, sequences: int, data: str | None = None) -> None:
        """CacheError unless the cache was written for this tokenization and dataset (`data`: the
        run's sequences_hash, compared when given)."""
        m = self.manifest
        if m.tokenizer != tokenizer_hash(tokenizer):
            raise CacheError(f"the teacher cache {self.folder} was written with another tokenizer "
                             f"(hash {m.tokenizer}, this run's is {tokenizer_hash(tokenizer)}): rebuild it for this run")
        if (m.seq_len, m.sequences) != (seq_len, sequences):
            fix = "--seq-len" if m.seq_len != seq_len else "--data and --val-fraction"
            raise CacheError(f"the teacher cache {self.folder} covers {m.sequences} sequences of {m.seq_len} tokens; "
                             f"this run has {sequences} of {seq_len}: rebuild it with the run's {fix}")
        if data is not None and m.data and m.data != data:
            raise CacheError(f"the teacher cache {self.folder} covers other training sequences (data hash "
                             f"{m.data}, this run's is {data}): rebuild it with the run's --data and --val-fraction")

    def lookup(self, seq_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices int32, logprobs bf16/fp16), each [len(seq_ids), seq_len, k]."""
        s = self.manifest.shard_sequences
        ids = seq_ids.tolist()
        idx = np.stack([self._idx[i // s][i % s] for i in ids])
        lp = np.stack([self._lp[i // s][i % s] for i in ids])
        return torch.from_numpy(idx), torch.from_numpy(lp.view(np.int16)).view(self.dtype)


# --------------------------------------------------------------------------- building one for a run


@dataclass
class CacheConfig:
    """The settings of `salt-kernels teacher-cache` (one flag per field)."""

    teacher: str = opt("", "the teacher: a local Hugging Face causal-LM directory, or the final/ "
                       "folder of a finished `salt-kernels train` run (the run folder itself is "
                       "taken to mean its final/)", default_help="required")
    out_dir: str = opt("", "folder of the cache (created; rerunning the same command there "
                       "resumes an interrupted write); pass it to `salt-kernels train --teacher-cache`",
                       default_help="required")
    data: list[str] = opt(help="the training run's --data: .txt / .jsonl files or folders; empty: "
                          "the built-in corpus", factory=list, default_help="the built-in corpus")
    tokenizer: str | None = opt(None, "the training run's --tokenizer (a tokenizer directory or "
                                "tokenizer.json)", default_help="the teacher's own tokenizer files")
    seq_len: int = opt(DataConfig.seq_len, "the training run's --seq-len (tokens per sequence)")
    val_fraction: float = opt(DataConfig.val_fraction, "the training run's --val-fraction (the "
                              "train/validation split, so the cache covers the run's training sequences)")
    k: int = opt(64, f"teacher tokens kept per position (its k most likely next tokens), "
                 f"{K_RANGE[0]} to {K_RANGE[1]}; each costs 6 bytes per token on disk")
    select_top_k: int = opt(10, "the same pass scores every sequence for SALT data selection (4 bytes "
                            "per sequence), counting a token when its true next token is in the "
                            "teacher's top-k: the training run's --select-top-k, so that `train "
                            "--teacher-cache DIR --select-data` selects without the teacher")
    dtype: str = opt("bf16", "storage type of the log-probabilities, 2 bytes each: bf16, or fp16 "
                     "(3 more mantissa bits; a top-k log-prob is far inside its range)", tuple(DTYPES))
    batch_size: int = opt(16, "sequences per teacher forward pass")
    shard_sequences: int = opt(256, "sequences per shard file (the unit of resumption)")
    teacher_dtype: str = opt("auto", "teacher weights dtype (auto: float32 on CPU, bfloat16 on GPU); "
                             "the log-softmax is computed in float32 either way", TEACHER_DTYPES)
    device: str = opt("auto", "auto (cuda if available), cpu or cuda", DEVICES)
    threads: int = opt(0, "CPU threads for torch (0: torch's default); 1 on a machine shared with other jobs")
    progress: bool = opt(True, "show a progress bar")


def check_cache_config(cc: CacheConfig) -> None:
    """Value checks that need no files, each naming its flag."""
    if not cc.teacher:
        raise ConfigError("--teacher is required: the teacher model directory (or a finished run's final/)")
    if not cc.out_dir:
        raise ConfigError("--out-dir is required: the folder the cache is written to")
    if not K_RANGE[0] <= cc.k <= K_RANGE[1]:
        raise ConfigError(f"--k must be in [{K_RANGE[0]}, {K_RANGE[1]}], got {cc.k}")
    if cc.dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {cc.dtype!r}")
    for name in ("batch_size", "shard_sequences", "seq_len", "select_top_k"):
        if getattr(cc, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cc, name)}")
    if cc.threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {cc.threads}")


def run_config(cc: CacheConfig):
    """The SALT run config whose training data the cache covers (data, tokenizer, split, length)."""
    from .config import TrainConfig

    return TrainConfig().replace(role="salt", teacher=cc.teacher, data=list(cc.data), tokenizer=cc.tokenizer,
                                 seq_len=cc.seq_len, val_fraction=cc.val_fraction, out_dir=cc.out_dir,
                                 teacher_dtype=cc.teacher_dtype, device=cc.device)


def size_line(m: Manifest, resumed: bool) -> str:
    """What the cache will take on disk, said before it is written."""
    per_token = bytes_per_token(m.k)
    total = per_token * m.tokens + SCORE_BYTES * m.sequences
    line = (f"teacher cache: {m.sequences:,} sequences x {m.seq_len} tokens = {m.tokens:,} tokens; top {m.k} "
            f"({m.dtype}): {per_token} bytes per token ({m.k} int32 ids + {m.k} 16-bit log-probs) and "
            f"{SCORE_BYTES} per sequence (its data-selection score), {_human(total)} in total on disk, "
            f"{m.n_shards} shard(s) of {m.shard_sequences} sequences")
    if resumed:
        left = sum(min(m.sequences, (i + 1) * m.shard_sequences) - i * m.shard_sequences
                   for i in range(m.n_shards) if i not in m.complete)
        line += (f"; resuming: {len(m.complete)} of {m.n_shards} shards already written, "
                 f"{_human(left * m.seq_len * per_token)} to go")
    return line


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def build_teacher_cache(cc: CacheConfig, *, log: Callable[[str], None] | None = None,
                        stop_after_shards: int | None = None) -> Manifest:
    """Runs the teacher over the training sequences of a run with these data settings (the
    trainer's own dataset code, build.training_data, so row i is the run's sequence i) and writes
    or resumes the cache in cc.out_dir, with the tokenizer next to it. Raises ConfigError naming
    the flag for bad input."""
    from . import build
    from .data import load_tokenizer
    from .metrics import log as default_log
    from .models import load_model_dir
    from .runtime import resolve_device

    log = log or default_log
    check_cache_config(cc)
    cfg = run_config(cc)
    docs = build.validate_inputs(cfg)  # resolves --teacher (a run folder: its final/), --data, --out-dir
    teacher_dir = cfg.salt.teacher
    source = build.tokenizer_source(cfg)
    if source is None:
        raise ConfigError(f"the teacher {teacher_dir!r} has no tokenizer files: pass --tokenizer with the "
                          "tokenizer it was trained with")
    tokenizer = load_tokenizer(source)
    build.check_vocabularies(cfg, tokenizer)
    if cc.threads:
        torch.set_num_threads(cc.threads)
    device = resolve_device(cc.device, 0)
    data = build.training_data(cfg, docs, tokenizer)
    out = Path(cc.out_dir)
    teacher = load_model_dir(teacher_dir, dtype=build.teacher_dtype(cc.teacher_dtype, device))
    name = str(Path(teacher_dir).resolve())
    try:
        plan = plan_cache(out, teacher, data.train, teacher_name=name, tokenizer=tokenizer, k=cc.k,
                          dtype=cc.dtype, shard_sequences=cc.shard_sequences, select_top_k=cc.select_top_k)
    except CacheError as exc:
        raise ConfigError(f"--out-dir: {exc}") from None
    resumed = (out / "manifest.json").is_file()
    log(size_line(plan, resumed))
    need = bytes_per_token(plan.k) * plan.seq_len * (plan.sequences - sum(
        min(plan.sequences, (i + 1) * plan.shard_sequences) - i * plan.shard_sequences for i in plan.complete))
    free = shutil.disk_usage(out).free
    if need > free:
        raise ConfigError(f"--out-dir {str(out)!r}: the cache needs {_human(need)} more, the disk has "
                          f"{_human(free)} free")
    if not (out / "tokenizer").is_dir():
        tokenizer.save_pretrained(out / "tokenizer")
    manifest = write_cache(out, teacher, data.train, teacher_name=name, tokenizer=tokenizer, k=cc.k,
                           dtype=cc.dtype, batch_size=cc.batch_size, shard_sequences=cc.shard_sequences,
                           select_top_k=cc.select_top_k, device=device, progress=cc.progress,
                           stop_after_shards=stop_after_shards)
    left = manifest.n_shards - len(manifest.complete)
    if left:
        log(f"teacher cache: stopped with {left} of {manifest.n_shards} shards to go; rerun the same "
            "command to finish it")
    else:
        log(f"teacher cache: {out} complete ({_human(bytes_per_token(manifest.k) * manifest.tokens)}, "
            f"written in {manifest.build_time_s:.1f}s); train with --teacher-cache {out}")
    return manifest
