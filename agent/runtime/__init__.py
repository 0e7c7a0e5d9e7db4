"""The agent's imperative shell: the master link (gRPC) and the agent loop that ties the checkpoint,
the launcher and the pure core together."""
