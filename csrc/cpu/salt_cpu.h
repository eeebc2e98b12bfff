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

// The offline top-k teacher (TopkArgs, salt_math.h). Per row the loss, CE, KD, the three
// log-sum-exps (lse_z, lse_zt, lse_rest), the accuracy when rows.accuracy is set
// and the scaled gradient when rows.grad is set, with softcap, label smoothing and z-loss. Rows
// are split over rows.num_threads threads. The caller has validated every argument (indices in
// range and not repeated within a row).
void topk_rows_cpu(const TopkArgs& args);

// The instruction set the kernel runs with on this machine: "avx512", "avx2" or "generic".
const char* cpu_isa();

}  // namespace salt
