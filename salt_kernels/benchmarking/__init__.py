"""Library code of `salt-kernels bench`, `salt-kernels profile`, the fixed-size scripts in
benchmarks/ and the pytest-benchmark suite: one case builder (cases: variants, shapes, inputs),
one timer (timing: torch.utils.benchmark's blocked_autorange on CPU, triton's do_bench on GPU),
one memory probe and the machine's facts (machine), one results format (results), the harness
that runs cases, each in its own process by default (runner, worker), tables, RESULTS.md and
plots (render), end-to-end training-step profiling (profiling) and SALT's wall-clock accounting
(accounting). Heavy imports (matplotlib, transformers, triton) happen inside the functions that
need them.
"""
