// CPU backend of the SALT loss: C++17, no Python, no PyTorch. See salt_math.h for the argument
// block and the math.
#pragma once

#include "../salt_math.h"

namespace salt {

// Computes the per-row loss, CE, KD and the three log-sum-exps of every row, the accuracy when
// args.accuracy is set, and (when args.grad is set) the gradient w.r.t. the student logits,
// scaled per row by args.grad_scale, with the distillation options of args (all off by
// default). Rows are split over args.num_threads threads. The caller has validated every
// argument.
void rows_cpu(const RowsArgs& args);

// The offline top-k teacher (docs/design.md, "Top-k teacher"): the fields of `rows` that
// describe the student, the labels, the outputs and the options (teacher* and kd_vocab, teacher
// softcap and divergence are not used), plus the teacher's k slots per row. lse receives
// (lse_z, lse_zt, lse_rest), lse_rest the log-sum-exp of z / tau over the entries outside K.
struct TopkArgs {
  RowsArgs rows;
  const void* indices = nullptr;  // [n_rows, k], int64 or int32; negative: empty slot. Never read
                                  // when rows.kd_weight == 0.
  int64_t indices_row_stride = 0;
  int32_t indices_int64 = 1;
  const void* logprobs = nullptr;  // [n_rows, k] in a salt::Dtype, the teacher's log p at tau = 1
  int64_t logprobs_row_stride = 0;
  int32_t logprobs_dtype = kFloat32;
  int64_t k = 0;
  int32_t bucket = 1;  // 1: tail "bucket", 0: "renormalize"
};

// Per row the loss, CE, KD, the three log-sum-exps above, the accuracy when rows.accuracy is set
// and the scaled gradient when rows.grad is set, with softcap, label smoothing and z-loss. Rows
// are split over rows.num_threads threads. The caller has validated every argument (indices in
// range and not repeated within a row).
void topk_rows_cpu(const TopkArgs& args);

// The instruction set the kernel runs with on this machine: "avx512", "avx2" or "generic".
const char* cpu_isa();

}  // namespace salt
