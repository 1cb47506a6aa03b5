"""The host side of the bus-wrapped NPU (docs/board.md): a register-level driver
(:class:`~.driver.NpuDriver`) over a :class:`~.transport.Transport`, the greedy host loop
that runs a network's samples through it (:func:`~.session.run_job`), a scheduler serving
a request trace through it (:func:`~.serve.run_on_transport`, what ``fluidnpu board run``
runs), and the transport over LiteX's UARTBone (:mod:`.uartbone`, for the ULX3S SoC)."""
from .driver import DriverError, NpuDriver, load_regs, regs_for
from .transport import Transport

__all__ = ["DriverError", "NpuDriver", "Transport", "load_regs", "regs_for"]
