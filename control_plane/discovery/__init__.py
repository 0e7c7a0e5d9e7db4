"""Service discovery from the replicated state (docs/dns.md, docs/load-balancing.md): the ready tasks
(`endpoints`), following the masters (`watch`), a DNS zone (`dns_records`, pure) served with dnslib
(`dns_server`), and an HAProxy configuration (`haproxy_config`, pure) kept loaded (`haproxy`)."""
