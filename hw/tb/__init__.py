"""cocotb testbenches of the NPU core: the memory model and the GEMM bench.

These modules import cocotb and run inside an HDL simulator; start them through
:mod:`fluidnpu.hw.gemm_runner` and :mod:`fluidnpu.hw.fbe_runner`.
"""
