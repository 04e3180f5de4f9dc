"""A local stand-in for Discord's gateway v10 (and ``/gateway/bot``): the simulator.

Used by the project's tests, demo and benchmarks, and for offline load tests
(``spectacles-supervisor simulate``). See :mod:`supervisor.simulator.server` for the behaviour.
"""

from supervisor.simulator.server import Simulator, SimulatorOptions
from supervisor.simulator.thread import SimulatorThread

__all__ = ["Simulator", "SimulatorOptions", "SimulatorThread"]
