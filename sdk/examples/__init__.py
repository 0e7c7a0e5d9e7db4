"""Example frameworks built on the SDK, runnable and importable (their tests drive them with FakeMaster).
They find the masters as every Tessera client does (`--masters`, else TESSERA_MASTERS, else the
./.tessera/cluster.json of `tessera up`, else 127.0.0.1:5050).

- `tessera.sdk.examples.batch`: run N commands to completion, retrying failures, and print a summary.
      python -m tessera.sdk.examples.batch --count 10 --command 'sleep 0.1'
- `tessera.sdk.examples.service`: keep K instances of a command running, spread by an agent attribute, and
  scale on request.
      python -m tessera.sdk.examples.service --instances 3 --spread-by rack \\
          --command 'python3 -m http.server 0'
"""
