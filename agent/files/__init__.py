"""The agent's file service (docs/files.md): every agent serves the sandboxes of its tasks over gRPC
(`tessera.v1.Files`) on its own port, `--files-address` (127.0.0.1:0 by default: a free port on loopback),
with the masters' mTLS (the agent's own certificate as the server's) and their token and ACL rules.

Its parts:

    catalog.py   `SandboxCatalog`: which tasks this agent has, whose they are, where their sandboxes are,
                 whether they are over or collected (written by the agent loop only, read by the service
                 threads); `OutputSampler`: the sizes of stdout and stderr about once a second, for `--since`
    follow.py    `Follower`: a file from an offset as it grows, across rotations, until the task is over
    service.py   `FileService`: the gRPC servicer (List, Stat, Read, Follow): authorization, then the walk
    server.py    `FileServer`: the gRPC server, its guard and limits; `start_file_server` for the agent

The decisions (paths, ranges, follow steps, `--since`, which sandbox) are pure, in
`tessera.agent.core.files`; the walk that never leaves a sandbox is `tessera.agent.executor.sandbox_files`;
who may read is `tessera.control_plane.core.acl.check_file_read`.
"""
