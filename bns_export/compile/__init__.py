"""The compiler: the unrolled sampler (unroll), compile_artifact (build) and the parity report (parity).

Kept import-free so that `bns_export.compile.*` submodules load only what they use.
"""
