"""The offline teacher cache (salt_kernels/train/teacher_cache.py): what it stores equals the
teacher's top-k, a killed-and-resumed write gives the same bytes, and a cache that does not fit
the run is refused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="the teacher cache runs Hugging Face causal LMs")

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

import salt_kernels as sk  # noqa: E402
from salt_kernels.train import teacher_cache as tc  # noqa: E402
from salt_kernels.train.selection import score_sequences  # noqa: E402


def _tokenizer(vocab):
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="t1")


def _teacher(vocab=40, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.npy"))}


def test_cache_holds_the_teachers_topk(tmp_path):
    teacher, tok = _teacher(), _tokenizer(40)
    seqs = torch.randint(0, 40, (11, 9), generator=torch.Generator().manual_seed(1))
    m = tc.write_cache(tmp_path, teacher, seqs, teacher_name="tiny", tokenizer=tok, k=8, batch_size=3,
                       shard_sequences=4, progress=False)
    assert m.n_shards == 3 and m.complete == [0, 1, 2] and m.tokens == 11 * 8
    cache = tc.TeacherCache(tmp_path)
    cache.check(tokenizer=tok, seq_len=8, sequences=11)
    ids = torch.tensor([10, 0, 5])
    idx, lp = cache.lookup(ids)
    assert idx.dtype == torch.int32 and lp.dtype == torch.bfloat16 and idx.shape == (3, 8, 8)
    with torch.no_grad():
        full = torch.log_softmax(teacher(input_ids=seqs[ids, :-1]).logits.float(), -1)
    top = torch.topk(full, 8, dim=-1)
    assert torch.equal(idx.long(), top.indices)
    torch.testing.assert_close(lp.float(), top.values.to(torch.bfloat16).float())
    # The cached top-k drive topk_salt_loss directly.
    z = torch.randn(3, 8, 40)
    loss = sk.topk_salt_loss(z, idx, lp, seqs[ids, 1:], temperature=2.0)
    assert torch.isfinite(loss)
    # The same pass stored the data-selection scores, the teacher model's own scoring of the sequences.
    assert m.select_top_k == 10
    scores = cache.scores(10)
    want = score_sequences(teacher, seqs, top_k=10)
    assert scores.dtype == torch.float32 and scores.shape == (11,) and torch.isfinite(want).sum() >= 5
    torch.testing.assert_close(scores, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(tc.CacheError, match="--select-top-k 10, this run asks for 5"):
        cache.scores(5)


def test_killed_and_resumed_write_gives_the_same_bytes(tmp_path):
    teacher, tok = _teacher(), _tokenizer(40)
    seqs = torch.randint(0, 40, (10, 7), generator=torch.Generator().manual_seed(2))
    kw = dict(teacher_name="tiny", tokenizer=tok, k=8, batch_size=2, shard_sequences=3, progress=False)
    tc.write_cache(tmp_path / "whole", teacher, seqs, **kw)
    m = tc.write_cache(tmp_path / "resumed", teacher, seqs, stop_after_shards=2, **kw)
    assert m.complete == [0, 1]
    with pytest.raises(tc.CacheError, match="incomplete"):
        tc.TeacherCache(tmp_path / "resumed")
    tc.write_cache(tmp_path / "resumed", teacher, seqs, **kw)
    assert _digest(tmp_path / "whole") == _digest(tmp_path / "resumed")
    assert not list((tmp_path / "resumed").glob("*.tmp*"))


def test_cache_that_does_not_fit_is_refused(tmp_path):
    teacher, tok = _teacher(), _tokenizer(40)
    seqs = torch.randint(0, 40, (4, 6), generator=torch.Generator().manual_seed(3))
    tc.write_cache(tmp_path, teacher, seqs, teacher_name="tiny", tokenizer=tok, k=8, progress=False)
    cache = tc.TeacherCache(tmp_path)
    with pytest.raises(tc.CacheError, match="another tokenizer"):
        cache.check(tokenizer=_tokenizer(41), seq_len=5, sequences=4)
    with pytest.raises(tc.CacheError, match="--seq-len"):
        cache.check(tokenizer=tok, seq_len=6, sequences=4)
    with pytest.raises(tc.CacheError, match="another configuration"):
        tc.write_cache(tmp_path, teacher, seqs, teacher_name="tiny", tokenizer=tok, k=16, progress=False)
    with pytest.raises(tc.CacheError, match="--k"):
        tc.write_cache(tmp_path / "x", teacher, seqs, teacher_name="tiny", tokenizer=tok, k=4, progress=False)
    with pytest.raises(tc.CacheError, match="another configuration.*select_top_k"):
        tc.write_cache(tmp_path, teacher, seqs, teacher_name="tiny", tokenizer=tok, k=8, select_top_k=5,
                       progress=False)
    with pytest.raises(tc.CacheError, match="--select-top-k must be at least 1"):
        tc.write_cache(tmp_path / "y", teacher, seqs, teacher_name="tiny", tokenizer=tok, k=8, select_top_k=0,
                       progress=False)
    with pytest.raises(tc.CacheError, match="no manifest"):
        tc.TeacherCache(tmp_path / "nothing")
    assert tc.bytes_per_token(64) == 384
