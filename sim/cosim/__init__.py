"""Co-simulation: the schedulers of sched/ drive the RTL NPU with its Fluid Batching
Engine, and the serving simulator's FBE mode serves the same trace from the cycle model.

Entry points: :func:`.run.prepare`, :func:`.run.run_model`, :func:`.run.run_rtl`,
:func:`.run.agreement`; the command is ``fluidnpu cosim``. See docs/cosim.md.
"""
