"""Service discovery over DNS from the replicated state, Mesos-DNS style (docs/dns.md): `records` decides the
zone (pure), `server` serves it with dnslib and keeps it current from the masters."""
