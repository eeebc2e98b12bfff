"""Library code of `salt-kernels bench` and `salt-kernels profile`: the benchmark grid and
variants (cases), timing and copy bandwidth (timing), per-process peak memory and machine facts
(machine), the per-case subprocess (worker), the orchestration (runner), tables, RESULTS.md and
plots (render), end-to-end training-step profiling (profiling) and SALT's wall-clock accounting
(accounting). Heavy imports (matplotlib, transformers) happen inside the functions that need them.
"""
