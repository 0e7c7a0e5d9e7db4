"""Example frameworks built on the SDK, runnable and importable (their tests drive them with FakeMaster).

- `tessera.sdk.examples.batch`: run N commands to completion, retrying failures, and print a summary.
      python -m tessera.sdk.examples.batch --masters 127.0.0.1:5050 --count 10 --command 'sleep 0.1'
- `tessera.sdk.examples.service`: keep K instances of a command running, spread by an agent attribute, and
  scale on request.
      python -m tessera.sdk.examples.service --masters 127.0.0.1:5050 --instances 3 --spread-by rack \\
          --command 'python3 -m http.server 0'
"""
