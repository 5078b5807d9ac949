"""Triton kernels of pimm_fast's ops.

Importing this package imports triton; ``pimm_fast.ops`` registers the ``.triton`` overloads without
importing it, and loads these modules on the first call. On a machine without a GPU the kernels run in
Triton's interpreter (TRITON_INTERPRET=1 set before triton is imported), which is how they are tested.
"""
