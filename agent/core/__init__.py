"""The agent's pure core: the status-update manager and the task table. (Which master to dial next is
`tessera.control_plane.wire.DialPlan`, the choice every client of the masters shares.)

Nothing here does I/O, reads a clock or draws random numbers (a test scans these modules for it): the
runtime (`tessera.agent.runtime`) and the emulated agents (`tessera.agent.emulated`) pass times and random fractions in.
"""
