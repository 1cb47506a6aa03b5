"""The host side of the bus-wrapped NPU (docs/board.md): a register-level driver
(:class:`~.driver.NpuDriver`) over a :class:`~.transport.Transport`, and the host loop
that runs a network's samples through it (:func:`~.session.run_job`)."""
from .driver import DriverError, NpuDriver, load_regs, regs_for
from .transport import Transport

__all__ = ["DriverError", "NpuDriver", "Transport", "load_regs", "regs_for"]
