"""The agent's pure core: the status-update manager, the task table, the dialing plan.

Nothing here does I/O, reads a clock or draws random numbers (a test scans these modules for it): the
runtime (`tessera.agent.runtime`) and the emulated agents (`tessera.agent.emulated`) pass times and random fractions in.
"""
