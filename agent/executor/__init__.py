"""Running tasks: the supervisor program, isolation (cgroups v2/v1, rlimits) and the process launcher.

Kept free of grpc and of the agent runtime: the supervisor imports from here and must start fast.
"""
