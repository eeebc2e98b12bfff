"""Everything a run does before its first step: input checks, the output folder (fresh or
resumed), tokenizer, data, models, optimizer and the data order. build_run returns a Run, what
the training loop (trainer.py) works with."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from . import checkpoint as ckpt
from .config import ConfigError, TrainConfig, check_config
from .data import (
    Dataset,
    ShardSampler,
    build_dataset,
    has_tokenizer,
    load_documents,
    load_tokenizer,
    split_documents,
    train_tokenizer,
)
from .metrics import log
from .models import (
    check_model_spec,
    count_parameters,
    is_model_dir,
    load_model_dir,
    make_model,
    model_dir_vocab_size,
)
from .parallel import shard_student, shard_teacher
from .runtime import Dist
from .step import SaltStep, StudentLoss, TopkTeacher, final_logit_softcap, plain_projection, resolve_kd_vocab
from .teacher_cache import CacheError, TeacherCache, sequences_hash

# Keys that may differ between a run and its resumption.
RESUME_FREE_KEYS = {"resume", "overwrite", "progress", "device", "backend", "log_interval",
                    "ckpt_interval", "ckpt_minutes", "eval_interval", "threads"}
RUN_ARTIFACTS = ("metrics.jsonl", "checkpoint.pt", "summary.json", "config.json", "selection.pt",
                 "final", "tokenizer")


# --------------------------------------------------------------------------- checks


def ensure_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot write to the output directory {str(out_dir)!r} ({reason}): "
                          "choose a writable --out-dir") from None


def validate_inputs(cfg: TrainConfig) -> list[str]:
    """Every check that needs no training, in the order a user would fix them. Returns the
    documents (read once here) so a bad --data fails before anything is built."""
    check_config(cfg)
    check_model_spec(cfg.model_spec(), "--model")
    if cfg.run.role == "salt" and cfg.salt.teacher:  # a run folder stands for its final/ model
        cfg.salt.teacher = ckpt.resolve_model_dir(cfg.salt.teacher, "--teacher")
    if cfg.run.role == "salt" and cfg.salt.teacher_cache:
        open_teacher_cache(cfg)  # exists, complete
    if cfg.data.tokenizer:
        load_tokenizer(cfg.data.tokenizer)  # raises a ConfigError for a bad path
    docs = load_documents(cfg.data.data)
    ensure_writable(Path(cfg.run.out_dir))
    return docs


def open_teacher_cache(cfg: TrainConfig) -> TeacherCache:
    """The run's --teacher-cache, opened (memory-mapped); ConfigError naming the flag when it is
    missing, incomplete or not a cache."""
    try:
        return TeacherCache(cfg.salt.teacher_cache)
    except CacheError as exc:
        raise ConfigError(f"--teacher-cache: {exc}") from None
    except (OSError, ValueError, TypeError) as exc:  # a damaged manifest or shard
        raise ConfigError(f"--teacher-cache {cfg.salt.teacher_cache!r} cannot be read ({exc}): rebuild it "
                          "with `salt-kernels teacher-cache`") from None


def check_teacher_cache(cache: TeacherCache, cfg: TrainConfig, data: Dataset) -> None:
    """ConfigError naming --teacher-cache unless the cache covers this run's training sequences
    (tokenizer, --seq-len, data and split: the manifest's hashes)."""
    try:
        cache.check(tokenizer=data.tokenizer, seq_len=cfg.data.seq_len, sequences=len(data.train),
                    data=sequences_hash(data.train))
    except CacheError as exc:
        raise ConfigError(f"--teacher-cache: {exc}") from None


def check_vocabularies(cfg: TrainConfig, tokenizer) -> int:
    """The student's vocabulary size; ConfigError when the tokenizer does not fit the models.
    A preset student gets the teacher's vocabulary size; a student directory keeps its own, which
    may differ from the teacher's (vocabularies padded differently: the KD then compares the
    tokenizer's tokens, see resolve_kd_vocab)."""
    n_tok = len(tokenizer)
    student_vocab = model_dir_vocab_size(cfg.model_spec()) if is_model_dir(cfg.model_spec()) else None
    if cfg.run.role == "salt" and cfg.salt.teacher_cache:
        teacher_vocab = open_teacher_cache(cfg).manifest.teacher_vocab or n_tok
        if n_tok > teacher_vocab:
            raise ConfigError(f"the tokenizer has {n_tok} tokens but the teacher of --teacher-cache had "
                              f"vocab_size {teacher_vocab}: SALT needs the tokenizer the teacher was trained with")
        if student_vocab is None:
            student_vocab = teacher_vocab
        elif student_vocab < teacher_vocab:
            raise ConfigError(f"the student's vocabulary ({student_vocab}) is smaller than the teacher's of "
                              f"--teacher-cache ({teacher_vocab}): the cached token ids may fall outside it")
    elif cfg.run.role == "salt":
        teacher_dir = cfg.salt.teacher
        teacher_vocab = model_dir_vocab_size(teacher_dir)
        if n_tok > teacher_vocab:
            raise ConfigError(f"the tokenizer has {n_tok} tokens but the teacher {teacher_dir!r} has "
                              f"vocab_size {teacher_vocab}: SALT needs the tokenizer the teacher was trained with")
        if has_tokenizer(teacher_dir):
            teacher_tok = load_tokenizer(teacher_dir)
            if teacher_tok.get_vocab() != tokenizer.get_vocab():
                raise ConfigError(f"the tokenizer of this run differs from the teacher's "
                                  f"({teacher_dir!r}): drop --tokenizer to use the teacher's, or "
                                  "pass the tokenizer the teacher was trained with")
        if student_vocab is None:
            student_vocab = teacher_vocab
    vocab = student_vocab if student_vocab is not None else n_tok
    if n_tok > vocab:
        raise ConfigError(f"the tokenizer has {n_tok} tokens but the model's vocab_size is {vocab}")
    return vocab


# --------------------------------------------------------------------------- fresh or resumed


def resume_state(cfg: TrainConfig, d: Dist) -> dict | None:
    """The checkpoint this run continues from (--resume with a checkpoint in OUT_DIR), or None:
    then OUT_DIR holds nothing of an earlier run. Refuses to mix two runs in one folder, and to
    resume with settings that differ from the checkpoint's."""
    out = Path(cfg.run.out_dir)
    has_ckpt = (out / ckpt.CHECKPOINT).exists()
    if cfg.run.resume and has_ckpt:
        state = ckpt.load(out / ckpt.CHECKPOINT)
        _check_resume_compatible(state, cfg, d)
        return state
    if (has_ckpt or (out / "metrics.jsonl").exists()) and not (cfg.run.overwrite or cfg.run.resume):
        raise ConfigError(f"{str(out)!r} already holds a run: pass --resume to continue it, "
                          "--overwrite to start over, or choose another --out-dir")
    if d.main:
        if cfg.run.resume:
            log(f"--resume: no checkpoint in {out}, starting from step 0")
        for name in RUN_ARTIFACTS:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    d.barrier()
    return None


def _check_resume_compatible(state: dict, cfg: TrainConfig, d: Dist) -> None:
    if state.get("world_size", 1) != d.world:
        raise ConfigError(f"the checkpoint was written by {state['world_size']} processes, this run "
                          f"has {d.world}: resume with the same --nproc_per_node")
    saved, now = state["config"], cfg.to_dict()
    diffs = []
    for section, values in saved.items():
        for key, value in values.items():
            if key not in RESUME_FREE_KEYS and now.get(section, {}).get(key) != value:
                diffs.append(f"{key}: checkpoint {value!r}, now {now[section][key]!r}")
    if diffs:
        raise ConfigError("--resume with settings that differ from the checkpoint's; rerun with the "
                          "original flags (or start over with --overwrite):\n  " + "\n  ".join(diffs))


# --------------------------------------------------------------------------- data


def training_data(cfg: TrainConfig, docs: list[str], tokenizer,
                  split: tuple[list[str], list[str]] | None = None) -> Dataset:
    """The run's sequences: the fixed train/validation split of the documents (--val-fraction),
    tokenized, cut to --seq-len. Every run and the teacher cache build theirs here, so sequence
    i of data.train is the same tokens for all of them (the sampler's ids index it). `split`:
    the split already made of `docs`."""
    train_docs, val_docs = split if split is not None else split_documents(docs, cfg.data.val_fraction)
    return build_dataset(train_docs, val_docs, tokenizer, cfg.data.seq_len)


class Batch(NamedTuple):
    """One process's batch: inputs and targets (batch, seq_len) and the ids of its sequences
    (positions in data.train, on the CPU: what a teacher cache is looked up by)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    ids: torch.Tensor


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    """What the training loop works with."""

    model: torch.nn.Module  # the student
    module: torch.nn.Module  # StudentLoss(model), inside DistributedDataParallel with torchrun
    teacher: torch.nn.Module | None  # frozen, eval mode; None unless --role salt with --teacher
    salt: SaltStep  # the loss and its kd_weight schedule
    optimizer: torch.optim.Optimizer
    tokenizer: object
    vocab: int
    data: Dataset
    val: torch.Tensor  # the evaluation sequences
    sampler: ShardSampler  # this process's batches
    stage1_sampler: ShardSampler | None  # stage 1's batches with --select-data
    device: torch.device
    teacher_cache: TeacherCache | None = None  # --teacher-cache: the teacher's top-k on disk

    @property
    def n_kd(self) -> int:
        return self.salt.n_kd

    def batch(self, step: int) -> Batch:
        """Inputs, targets and sequence ids of this process at `step`."""
        sampler = self.sampler if self.stage1_sampler is None or step >= self.n_kd else self.stage1_sampler
        ids = sampler.batch(step)
        batch = self.data.train[ids].to(self.device, non_blocking=True)
        return Batch(batch[:, :-1], batch[:, 1:], ids)

    def teacher_out(self, batch: Batch) -> TopkTeacher | object:
        """The teacher's side of the loss for `batch`: the cached top-k rows of its sequences
        (--teacher-cache) or the teacher's forward (--teacher)."""
        if self.teacher_cache is not None:
            return self.salt.teacher_topk(self.teacher_cache, batch.ids, self.device)
        return self.salt.teacher_forward(self.teacher, input_ids=batch.inputs)

    def autocast(self):
        """bf16 autocast on CUDA; fp32 on the CPU."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()


def build_run(cfg: TrainConfig, docs: list[str], device: torch.device, d: Dist, resuming: bool) -> Run:
    """Tokenizer, data, student (from the seed: the same init for baseline and SALT), teacher,
    optimizer and data order, in a fixed order so that a seed gives one run."""
    r, s, o, m = cfg.run, cfg.salt, cfg.optim, cfg.model
    out = Path(r.out_dir)
    train_docs, val_docs = split_documents(docs, cfg.data.val_fraction)
    tokenizer = _resolve_tokenizer(cfg, train_docs, out, d, resuming)
    vocab = check_vocabularies(cfg, tokenizer)
    data = training_data(cfg, docs, tokenizer, split=(train_docs, val_docs))
    cache = None
    if r.role == "salt" and s.teacher_cache:
        cache = open_teacher_cache(cfg)
        check_teacher_cache(cache, cfg, data)
    n_eval = cfg.data.eval_sequences or len(data.val)
    eval_ids = torch.linspace(0, len(data.val) - 1, min(n_eval, len(data.val))).long().unique()
    if r.fsdp:  # every process must run as many forwards (FSDP's collectives): a multiple of them
        eval_ids = eval_ids[: len(eval_ids) // d.world * d.world]
        if not len(eval_ids):
            raise ConfigError(f"--fsdp evaluates on a multiple of the {d.world} processes' count of sequences: "
                              "raise --eval-sequences (or the validation split)")
    if d.main:
        ckpt.atomic_write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", out / "config.json")

    random.seed(r.seed)
    np.random.seed(r.seed)
    torch.manual_seed(r.seed)
    model = make_model(cfg.model_spec(), vocab, hidden_size=m.hidden_size, num_layers=m.num_layers,
                       num_heads=m.num_heads, intermediate_size=m.intermediate_size)
    model.to(device).train()
    teacher = None
    if r.role == "salt" and cache is None:
        teacher = load_model_dir(s.teacher, dtype=teacher_dtype(s.teacher_dtype, device)).to(device).eval()
        teacher.requires_grad_(False)
    if r.loss == "linear":
        for net in (model, teacher) if teacher is not None else (model,):
            try:
                plain_projection(net)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
    salt = _resolve_step(cfg, model, teacher, tokenizer, d)
    module = StudentLoss(model, salt)
    if r.fsdp:
        try:
            shard_student(model)  # in place, before the optimizer sees the parameters
            if teacher is not None and r.fsdp_teacher:
                shard_teacher(teacher)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    elif d.world > 1:
        module = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=o.lr, betas=(o.beta1, o.beta2))

    # this process's shard; with --select-data, stage 1 reads the teacher's top scorers of it
    per_rank = r.batch_size // d.world
    sampler = ShardSampler(torch.arange(len(data.train)), per_rank, r.seed, d.rank, d.world)
    stage1_sampler = None
    if s.select_data and salt.n_kd > 0:
        stage1_sampler = _selection_sampler(cfg, teacher, cache, data, sampler, device, d, out, per_rank)
    return Run(model=model, module=module, teacher=teacher, salt=salt, optimizer=optimizer,
               tokenizer=tokenizer, vocab=vocab, data=data, val=data.val[eval_ids], sampler=sampler,
               stage1_sampler=stage1_sampler, device=device, teacher_cache=cache)


def _resolve_step(cfg: TrainConfig, model, teacher, tokenizer, d: Dist) -> SaltStep:
    """The run's SaltStep for these models: kd_vocab resolved (the tokenizer's length when the
    output layers differ in size, said once in the log) and the softcaps checked against the
    loss path, so that a bad combination fails before the first step."""
    salt = cfg.salt_step()
    try:
        kd_vocab, note = resolve_kd_vocab(model, teacher, salt.kd_vocab, len(tokenizer), option="--kd-vocab")
        salt = salt.replace(kd_vocab=kd_vocab)
        salt.loss_softcap(model, "student")
        if teacher is not None:
            salt.loss_softcap(teacher, "teacher")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if note and d.main:
        log(note)
    return salt


def describe(cfg: TrainConfig, run: Run, d: Dist) -> str:
    """The run's first log line."""
    r, s = cfg.run, cfg.salt
    options = [run.salt.describe_options()] if run.salt.describe_options() else []
    for name, net, given in (("softcap", run.model, run.salt.softcap),
                             ("teacher_softcap", run.teacher, run.salt.teacher_softcap)):
        own = final_logit_softcap(net) if net is not None and given is None else None
        if own is not None:
            options.append(f"{name} {own} (model config)")
    options = ", ".join(options)
    stage = (f", distillation for {run.n_kd} steps (w={s.kd_weight}, tau={s.temperature}, "
             f"{s.transition})") if run.n_kd else ""
    if run.n_kd and run.teacher_cache is not None:
        m = run.teacher_cache.manifest
        stage += (f" from the top-{m.k} teacher cache {s.teacher_cache} ({m.dtype}, tail "
                  f"{run.salt.tail}, teacher {m.teacher})")
    return (f"[{r.role}] {cfg.model_spec()}: {count_parameters(run.model) / 1e6:.2f}M parameters, "
            f"vocab {run.vocab}, {len(run.data.train)} train / {len(run.data.val)} val sequences of "
            f"{cfg.data.seq_len} tokens, {r.steps} steps x {r.batch_size} sequences on "
            f"{d.world} x {run.device.type}{' (student sharded by FSDP2)' if r.fsdp else ''}, loss path "
            f"{r.loss}{stage}"
            + (f", loss options: {options}" if options else ""))


def teacher_dtype(name: str, device: torch.device):
    """The teacher's weights dtype for --teacher-dtype NAME on `device`."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def _resolve_tokenizer(cfg: TrainConfig, train_docs: list[str], out: Path, d: Dist, resuming: bool):
    """The run's tokenizer, saved to OUT_DIR/tokenizer: the resumed run's own, --tokenizer, the
    teacher's (SALT), the student directory's, or a BPE trained here on the training split."""
    saved = out / "tokenizer"
    if resuming and has_tokenizer(str(saved)):
        return load_tokenizer(str(saved))
    source = tokenizer_source(cfg)
    if source is None and cfg.run.role == "salt":
        where = (f"the teacher {cfg.salt.teacher!r}" if cfg.salt.teacher
                 else f"--teacher-cache {cfg.salt.teacher_cache!r}")
        raise ConfigError(f"{where} has no tokenizer files: pass --tokenizer with the tokenizer the "
                          "teacher was trained with")
    if source is not None:
        tokenizer = load_tokenizer(source)
        if d.main:
            tokenizer.save_pretrained(saved)
        d.barrier()
        return tokenizer
    if d.main:
        t0 = time.perf_counter()
        tokenizer = train_tokenizer(train_docs, cfg.data.vocab_size)
        tokenizer.save_pretrained(saved)
        log(f"trained a byte-level BPE tokenizer ({len(tokenizer)} tokens) in "
            f"{time.perf_counter() - t0:.1f}s; saved to {saved}")
    d.barrier()
    return load_tokenizer(str(saved))


def tokenizer_source(cfg: TrainConfig) -> str | None:
    """Where a fresh run's tokenizer comes from: --tokenizer; for SALT the teacher's (its model
    directory, or the tokenizer/ folder a teacher cache holds); a student directory's own; None:
    a BPE is trained on the training split."""
    if cfg.data.tokenizer is not None:
        return cfg.data.tokenizer
    if cfg.run.role == "salt":
        teacher = cfg.salt.teacher or os.path.join(cfg.salt.teacher_cache, "tokenizer")
        if has_tokenizer(teacher):
            return teacher
    if is_model_dir(cfg.model_spec()) and has_tokenizer(cfg.model_spec()):
        return cfg.model_spec()
    return None


def _selection_sampler(cfg: TrainConfig, teacher, cache: TeacherCache | None, data: Dataset,
                       sampler: ShardSampler, device, d: Dist, out: Path, per_rank: int) -> ShardSampler:
    """Score this process's shard with the teacher (or read the scores the teacher cache's pass
    stored with it); stage 1 samples the top fraction of it."""
    from .selection import score_sequences, select_top_fraction

    s = cfg.salt
    path = out / ("selection.pt" if d.world == 1 else f"selection-rank{d.rank}.pt")
    ids = sampler.ids
    cached = torch.load(path, weights_only=True) if path.exists() else None
    if cache is not None:
        try:
            scores = cache.scores(s.select_top_k)[ids]
        except CacheError as exc:
            raise ConfigError(f"--select-data with --teacher-cache: {exc}") from None
        if d.main:
            log(f"data selection: {len(ids)} sequences scored by the teacher cache's pass ({cache.folder})")
    elif cached is not None and torch.equal(cached["ids"], ids) and cached["top_k"] == s.select_top_k:
        scores = cached["scores"]
    else:
        t0 = time.perf_counter()
        scores = score_sequences(teacher, data.train[ids], top_k=s.select_top_k, device=device)
        torch.save({"ids": ids, "scores": scores, "top_k": s.select_top_k}, path)
        if d.main:
            log(f"data selection: the teacher scored {len(ids)} sequences in "
                f"{time.perf_counter() - t0:.1f}s")
    chosen = select_top_fraction(scores, ids, s.select_fraction)
    if d.main:
        finite = scores[torch.isfinite(scores)]
        log(f"data selection: distillation draws from the top {len(chosen)} of {len(ids)} "
            f"sequences (score = median teacher loss over top-{s.select_top_k} tokens; "
            f"kept >= {float(scores[chosen].min()):.3f}, all median {float(finite.median()):.3f})")
    # stream 1: its own order; the shard is already this process's, so rank 0 of world 1
    return ShardSampler(chosen, per_rank, cfg.run.seed, 0, 1, stream=1)
